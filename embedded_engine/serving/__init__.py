"""HTTP serving: the OpenAI-compatible server, its engine process, its CLI, the protocol and vLLM-named metrics."""
