"""A failed handler is retried soon, then less often, never later than the cap."""

from kuberl.operator.decisions.backoff import retry_delay


def test_the_delay_doubles_from_a_second_up_to_the_cap():
    assert [retry_delay(a) for a in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(-1) == 1 and retry_delay(3, first_s=0.5, cap_s=3) == 3
