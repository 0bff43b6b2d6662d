"""LLM cores: model loading, the step-by-step generation engine, its scheduler and its sequences.

Imports run one way: ``engine`` → ``scheduler`` → ``sequence``. The scheduler and the sequences
are bookkeeping and import no torch, so the policy names (``scheduler.POLICIES``) can be checked
by the CLI and the config before anything heavy loads; the tensors live on the engine's side
(``core``, ``kv``, ``swap``, ``prefix_cache``, ``sampling``). This package imports nothing
itself, for the same reason.

Everything here runs on the engine thread except ``Engine.submit``/``Engine.cancel``, which the
kernel calls from the trio thread; the two sides share only a locked inbox and an outbox of
updates.
"""
