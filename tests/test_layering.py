"""The layering of the code, stated once here and held true: no import cycle, and imports run one way.

Layers from the top down (README, "Layout"). A module imports modules of its own layer and of
the layers `MAY_IMPORT` names for it, never others; imports made inside functions count:

    commands     pipeline/cli/             `segpic` commands: parse options, build a config, call one library function
    data stage   pipeline/ (the rest)      sources, ingest, mask generators, masks, repaint, verify, mask statistics
    training     model/training/           the trainer, its dataset, metrics and distributed plumbing
    evaluation   model/evaluation/, model/compare.py and what it draws and tests (rd_*, bd*)
    codec        model/ (the rest)         networks, checkpoints, `.segpic` bitstreams, the device
    formats      pipeline/{shards, manifest, label_map_format, raw_mask_format, images, fast_png, torch_files, atomic_files}.py

The data stage, training and evaluation stand side by side: none imports another. Where two
modules need each other, the choice between them belongs one level up (as `pipeline.masks`
chooses the engine that `pipeline.local_engine` and `pipeline.device_workers` are), and no
command imports another command. Libraries that only one place may use are named in `ONLY_IN`.
"""

from pipeline.cli import app
from import_graph import external_imports, import_graph, project_modules

FORMATS = tuple(
    f"pipeline.{name}"
    for name in ("shards", "manifest", "label_map_format", "raw_mask_format", "images", "fast_png", "torch_files", "atomic_files")
)
LAYERS = {  # layer -> module prefixes; a module belongs to the layer of its longest matching prefix
    "commands": ("pipeline.cli",),
    "data stage": ("pipeline",),
    "training": ("model.training",),
    "evaluation": ("model.evaluation", "model.compare", "model.rd_curves", "model.rd_plot", "model.bdrate", "model.bd_bootstrap"),
    "codec": ("model",),
    "formats": FORMATS,
}
MAY_IMPORT = {
    "commands": {"data stage", "training", "evaluation", "codec", "formats"},
    "data stage": {"formats"},
    "training": {"codec", "formats"},
    "evaluation": {"codec", "formats"},
    "codec": {"formats"},
    "formats": set(),
}
SAM_FAMILY = "pipeline.generators.sam_family"
FAMILIES = ("sam", "sam2", "sam3")
NEVER = [  # (importer prefix, imported prefix, why), inside a layer
    *[(f"{SAM_FAMILY}.engine", f"{SAM_FAMILY}.{family}", "the engine knows networks only through `PromptableSegmenter`")
      for family in FAMILIES],
    *[(f"{SAM_FAMILY}.{one}", f"{SAM_FAMILY}.{other}", "a family folder never reaches into another")
      for one in FAMILIES for other in FAMILIES if one != other],
    (f"{SAM_FAMILY}.sam2", f"{SAM_FAMILY}.engine", "sam2 runs the sam2 package's own automatic mask generator"),
]
ONLY_IN = {  # outside library -> the module prefixes that may import it
    "typer": ("pipeline.cli",),
    "dvclive": ("model.training.metrics",),
    "dvc": (),
    "ray": ("pipeline.ray_engine",),
    "segment_anything": (SAM_FAMILY,),
    "sam2": (SAM_FAMILY,),
    "sam3": (SAM_FAMILY,),
}


def layer_of(module: str) -> str:
    matches = [(len(prefix), layer) for layer, prefixes in LAYERS.items() for prefix in prefixes if _under(module, prefix)]
    return max(matches)[1]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(f"{prefix}.")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other in a loop (strongly connected components of more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def wrong_directions(graph: dict[str, set[str]]) -> list[str]:
    """Imports that run against the layering or a `NEVER` rule, one line each."""
    wrong = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            layer, target_layer = layer_of(module), layer_of(target)
            if target_layer != layer and target_layer not in MAY_IMPORT[layer]:
                wrong.append(f"{module} ({layer}) imports {target} ({target_layer})")
            wrong += [f"{module} imports {target}: {why}" for source, banned, why in NEVER if _under(module, source) and _under(target, banned)]
    return wrong


def test_every_layer_may_import_only_layers_below_it():
    order = list(LAYERS)
    assert all(order.index(lower) > order.index(layer) for layer, lowers in MAY_IMPORT.items() for lower in lowers)


def test_the_project_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_every_import_runs_down_the_layers():
    assert wrong_directions(import_graph()) == []


def test_libraries_are_imported_only_where_they_belong():
    misplaced = [
        f"{module} imports {library}"
        for module, path in project_modules().items()
        for library in sorted(external_imports(path) & set(ONLY_IN))
        if not any(_under(module, prefix) for prefix in ONLY_IN[library])
    ]
    assert misplaced == []


def test_the_checks_find_a_lazy_cycle_and_an_import_against_the_layers():
    """What the masks stage and the codec once did: a worker re-entering its caller, inference importing training."""
    graph = import_graph()
    graph["pipeline.device_workers"] = graph["pipeline.device_workers"] | {"pipeline.masks"}
    graph["model.bitstream"] = graph["model.bitstream"] | {"model.training.distributed"}
    graph["pipeline.shards"] = graph["pipeline.shards"] | {"pipeline.cli.errors"}
    assert cycles(graph) == [["pipeline.device_workers", "pipeline.masks"]]
    assert wrong_directions(graph) == [
        "model.bitstream (codec) imports model.training.distributed (training)",
        "pipeline.shards (formats) imports pipeline.cli.errors (commands)",
    ]


def test_every_module_has_its_layer():
    layers = {module: layer_of(module) for module in project_modules()}
    assert layers["pipeline.cli.train"] == "commands" and layers["pipeline.shards"] == "formats"
    assert layers["model.training.trainer"] == "training" and layers["model.bitstream"] == "codec"
    assert layers["pipeline.generators.sam_family.engine.amg"] == "data stage" and layers["model.compare"] == "evaluation"


def test_no_command_imports_another():
    """A stage's command goes straight to its library function; what two commands share is a CLI helper module."""
    commands = {command.callback.__module__ for command in app.registered_commands}
    graph = import_graph()
    assert [f"{module} imports {target}" for module in sorted(commands) for target in sorted(graph[module] & commands)] == []
