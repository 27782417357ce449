"""The engine core: configuration, sequences, block manager, scheduler, model runner, sampler, fault injection, the engine loop, tracing."""
