"""`--set KEY=VALUE` of the mask commands (`segpic masks`, `segpic repaint`): settings, optionally scoped to a generator."""


def parse_settings(settings: list[str], generator: str) -> tuple[tuple[str, str], ...]:
    """`KEY=VALUE` (or `GENERATOR.KEY=VALUE`, kept only when GENERATOR runs) -> pairs.

    The scoped form lets one command template (a DVC matrix) carry every generator's
    settings; the generator's config converts and checks the values it receives. A scope
    that names no generator is refused: a misspelt one would otherwise drop its setting
    without a word.
    """
    from pipeline.generators import generator_names

    pairs = []
    for setting in settings:
        key, equals, value = setting.partition("=")
        scope, dot, name = key.strip().rpartition(".")
        if not equals or not name or (dot and not scope):
            raise ValueError(f"--set expects KEY=VALUE or GENERATOR.KEY=VALUE, got {setting!r}")
        if dot and scope not in generator_names():
            raise ValueError(f"--set {setting}: no generator is called {scope!r}; the generators are {', '.join(generator_names())}")
        if not dot or scope == generator:
            pairs.append((name.replace("-", "_"), value.strip()))
    return tuple(pairs)
