"""What a Kubernetes LabelSelector selects, for tests that check policies against pod labels."""

from __future__ import annotations


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A LabelSelector's meaning (matchLabels and matchExpressions all hold)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": present and value in e.get("values", []), "NotIn": not present or value not in e.get("values", []),
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True
