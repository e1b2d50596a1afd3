"""Generation engines behind one interface: in-process torch, SGLang servers."""
