"""SGLang: the HTTP client, the engine, and the server launcher."""
