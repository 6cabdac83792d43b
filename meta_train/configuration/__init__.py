"""Configuration: the typed meta-training config, from YAML files and ``key=value`` overrides to
validated dataclasses. ``engine`` is the generic machinery (dataclasses ⇄ plain dicts, dotted
overrides, range checks, ``ConfigError``) and imports nothing of the project, so every layer may
use it; ``sections`` holds the config's sections, ``checks`` the checks across sections and of
names, ``schema`` the whole ``MetaTrainConfig`` and how it is loaded, saved and found. The schema
imports the layers whose settings it embeds or checks (``inner_loop``, ``estimators``,
``evaluation``'s criteria, contenders and suites, ``training.distributed``); nothing below it
imports the schema, so ``training``, ``sweeps`` and the command lines sit above it."""
