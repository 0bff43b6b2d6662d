"""LLM cores: model loading, the step-by-step generation engine and its sequences.

Everything here runs on the engine thread except ``Engine.submit``/``Engine.cancel``, which the
kernel calls from the trio thread; the two sides share only a locked inbox and an outbox of
updates.
"""
