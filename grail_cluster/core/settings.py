"""The configuration's schema: one dataclass per config group, and a typed, read-only view of a config.

``configs/*.yaml`` stay the defaults and Hydra composes them untyped, so ``plan.config`` (what
plan.json holds and hashes) is exactly the composed dict: a schema merged into the composition would
turn ``select.min_sr=1`` into ``1.0`` and change every plan hash. The schema is applied once, to the
resolved dict, by :func:`check_settings` (from :func:`grail_cluster.core.config.load`): a key no group
has, or a value of the wrong type, is a ConfigError naming the key and the valid keys, closest first.
The value rules with their own wording (ranges, choices, cross-group rules) stay in
:func:`grail_cluster.core.config.check_values`, which runs first.

Code reads a config through :func:`settings` (``settings(plan.config).eval.num_shards``). The same
classes are registered in Hydra's ConfigStore (``grail_schema``, ``grail_schema/cluster/<backend>``)
for tools that compose against them.

Field metadata ``types``: the Python types accepted where the annotation is wider or narrower than what
users write (a numeric SLURM account Hydra parses as an int; ``cpu: 1`` or ``250m`` on Kubernetes).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grail_cluster.core.errors import ConfigError

MISSING = "???"  # OmegaConf's mark for a required value (data.motion_lib, sonic.root, cluster.image)


def _name(default: Any = None) -> Any:
    """A free name (run id, account, namespace...): Hydra reads ``run.id=2024`` as an int."""
    return field(default=default, metadata={"types": (str, int)})


def _scalar(default: Any) -> Any:
    return field(default=default, metadata={"types": (str, int, float)})


def _list() -> Any:
    return field(default_factory=list)


def _map() -> Any:
    return field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    id: str | None = _name()
    root: str = "runs"


@dataclass(frozen=True)
class NeedsSettings:
    """What doctor and plan require of the library: error | warn | no."""
    objects: str = "error"
    object_usd: str = "error"
    bps: str = "error"
    hand_actions: str = "warn"
    contacts: str = "error"
    table: str = "no"


@dataclass(frozen=True)
class PipelineSettings:
    name: str = MISSING
    exp: str = MISSING
    kind: str = "hoi"
    project_name: str = MISSING
    release_num_envs: int = 4096
    iterations: int = 20000
    save_frequency: int = 500
    sweep_tag: str = _name(MISSING)
    needs: NeedsSettings = field(default_factory=NeedsSettings)
    finetune_checkpoint: str | None = None
    finetune_iterations: int | None = None
    tiebreak: str = "obj_pos_error"
    flat_to_terrain_ratio: float | None = None  # terrain pipelines only


@dataclass(frozen=True)
class DataSettings:
    motion_lib: str = MISSING
    bps_dir: str | None = None
    object_usd_dir: str | None = None
    flat_usd_path: str | None = None
    flat_motion_dir: str | None = None
    allow: list[str] = _list()


@dataclass(frozen=True)
class JobSettings:
    python: str | None = None
    setup: list[str] = _list()
    env: dict[str, Any] = _map()


@dataclass(frozen=True)
class SonicSettings:
    root: str = MISSING
    train_script: str = "auto"
    eval_script: str = "auto"
    python: str = "python"
    launcher: list[str] = _list()
    setup: list[str] = _list()
    env: dict[str, Any] = _map()
    wandb_mode: str | None = None
    extra_overrides: list[str] = _list()
    eval_overrides: list[str] = _list()


@dataclass(frozen=True)
class FinetuneSettings:
    checkpoint: str | None = None
    mode: str = "resume"
    resume: bool = False


@dataclass(frozen=True)
class TrainSettings:
    enabled: bool = True
    nodes: int = 1
    gpus_per_node: int = 8
    device: str = "gpu"
    num_envs: int = 2048
    iterations: int | None = None
    save_frequency: int | None = None
    smoke: bool = False
    seed: int | None = None
    experiment_dir: str | None = None
    overrides: dict[str, Any] = _map()  # SONIC's keys: data, not schema
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    master_port: int = 29500


@dataclass(frozen=True)
class SelectSettings:
    k: int = 5
    min_sr: float = 0.0
    checkpoints: list[str] = _list()


@dataclass(frozen=True)
class EvalSettings:
    num_shards: int = 8
    sharding: str = "sonic_block"
    num_envs: int | None = None
    record_trajectories: bool = True


@dataclass(frozen=True)
class RenderSettings:
    enabled: bool = True
    resolution: str = "1280x720"
    camera_offset: list[float] = _list()
    lod_mm: float = 0


@dataclass(frozen=True)
class ExportSettings:
    min_progress: float = 1.0
    obj_pos_threshold: float | None = None


@dataclass(frozen=True)
class WebSettings:
    enabled: bool = True
    title: str | None = _scalar(None)


@dataclass(frozen=True)
class RehearsalSettings:
    enabled: bool = False
    faults: list[str] = _list()
    work_seconds: float = 0


@dataclass(frozen=True)
class StageResources:
    """time in whole minutes, mem in GiB per node, gpus per node (train: train.gpus_per_node)."""
    cpus: int = 1
    mem: float = 1
    time: int = 60
    gpus: int | None = None


def _resources() -> Any:
    return field(default_factory=StageResources)


@dataclass(frozen=True)
class ResourcesSettings:
    train: StageResources = _resources()
    select: StageResources = _resources()
    eval: StageResources = _resources()
    render: StageResources = _resources()
    export: StageResources = _resources()
    merge: StageResources = _resources()
    web: StageResources = _resources()


@dataclass(frozen=True)
class ClusterSettings:
    backend: str = "local"


@dataclass(frozen=True)
class LocalCluster(ClusterSettings):
    cpus: int | None = None
    gpus: list[Any] = _list()  # GPU ids handed out one per GPU slot
    shell: str = "bash"


@dataclass(frozen=True)
class SlurmCluster(ClusterSettings):
    backend: str = "slurm"
    partition: str | None = _name()
    account: str | None = _name()
    qos: str | None = _name()
    array_parallelism: int = 256
    max_array_size: int | None = None
    signal: str | None = "USR2@120"
    gpu_directive: str = "gpus-per-node"
    constraint: str | None = _name()
    exclude: str | None = _name()
    extra_directives: list[str] = _list()
    check_limits: bool = True


@dataclass(frozen=True)
class DriverSettings:
    service_account: str | None = "grail-cluster-driver"
    create_rbac: bool = True
    poll_seconds: float = 15
    backoff_limit: int = 6
    cpu: str = _scalar("250m")
    memory: str = _scalar("512Mi")
    node_selector: dict[str, Any] = _map()


@dataclass(frozen=True)
class KubernetesCluster(ClusterSettings):
    backend: str = "kubernetes"
    namespace: str = _name("default")
    context: str | None = None
    image: str = MISSING
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = _list()
    service_account: str | None = None
    queue: str | None = _name()
    pvc: str | None = _name()
    mount_path: str = "/workspace"
    array_parallelism: int = 256
    backoff_limit_per_index: int = 1
    max_failed_indexes: int | None = None
    ttl_seconds_after_finished: int = 604800
    node_selector: dict[str, Any] = _map()
    tolerations: list[Any] = _list()
    gpu_node_selector: dict[str, Any] = _map()
    gpu_tolerations: list[Any] = _list()
    gpu_resource: str = "nvidia.com/gpu"
    secret_env: dict[str, Any] = _map()  # ENV_NAME -> {secret: <Secret name>, key: <key in it>}
    driver: DriverSettings = field(default_factory=DriverSettings)


CLUSTERS: dict[str, type[ClusterSettings]] = {"local": LocalCluster, "slurm": SlurmCluster,
                                              "kubernetes": KubernetesCluster}


@dataclass(frozen=True)
class Settings:
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    cluster: ClusterSettings = field(default_factory=LocalCluster)  # the backend's own class, by cluster.backend
    resources: ResourcesSettings = field(default_factory=ResourcesSettings)
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    job: JobSettings = field(default_factory=JobSettings)
    sonic: SonicSettings = field(default_factory=SonicSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    render: RenderSettings = field(default_factory=RenderSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    web: WebSettings = field(default_factory=WebSettings)
    rehearsal: RehearsalSettings = field(default_factory=RehearsalSettings)


def register_configs() -> None:
    """Store the schema in Hydra's ConfigStore, beside (not inside) the YAML groups: an entry in the
    ``cluster`` group itself would show up in the groups' option lists that errors print."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="grail_schema", node=Settings)
    for backend, cls in CLUSTERS.items():
        cs.store(group="grail_schema/cluster", name=backend, node=cls)


# ----------------------------------------------------------------------------- the typed view


def settings(config: Mapping[str, Any]) -> Settings:
    """The typed view of a composed config (``plan.config``). Lenient on purpose: a plan.json from an
    older grail-cluster may lack keys (their defaults apply) or hold keys since removed (ignored);
    :func:`check_settings` is where a config is judged."""
    return _build(Settings, config)


def _build(cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        return cls()
    if cls is ClusterSettings:
        cls = CLUSTERS.get(data.get("backend"), ClusterSettings)
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            tp = _strip_optional(hints[f.name])
            kwargs[f.name] = _build(tp, value) if dataclasses.is_dataclass(tp) and value is not None else value
    return cls(**kwargs)


# ----------------------------------------------------------------------------- validation


def check_settings(config: Mapping[str, Any]) -> None:
    """Every key is one the schema has, every value of its field's type; else a ConfigError."""
    _check_node(config, Settings, "")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _valid_keys(bad: str, valid: list[str]) -> str:
    """The valid keys, closest to ``bad`` first (as overrides.py suggests one)."""
    ranked = sorted(valid, key=lambda k: -difflib.SequenceMatcher(None, bad, k).ratio())
    return ", ".join(ranked)


def _check_node(data: Any, cls: type, prefix: str) -> None:
    if cls is ClusterSettings:
        cls = CLUSTERS.get(data.get("backend") if isinstance(data, Mapping) else None, ClusterSettings)
    where = prefix.rstrip(".")
    if not isinstance(data, Mapping):
        keys = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"{where} must be a mapping of {keys}, got {data!r}",
                          fix=f"set its keys one by one, e.g. {where}.{dataclasses.fields(cls)[-1].name}=...")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"did you mean `{prefix}{close[0]}`? " if close else ""
            group = f"`{where}`" if where else "the top level"
            raise ConfigError(f"`{full}` is not a grail-cluster setting",
                              fix=f"{hint}the keys of {group} are: {_valid_keys(str(key), names)} "
                                  "(configs/config.yaml documents them)")
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data:
            _check_value(data[f.name], hints[f.name], f, f"{prefix}{f.name}")


def _check_value(value: Any, tp: Any, f: dataclasses.Field, key: str) -> None:
    optional = type(None) in typing.get_args(tp)
    if value is None and optional:
        return
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        _check_node(value, tp, key + ".")
        return
    accepted = f.metadata.get("types")
    if accepted is not None:
        ok = isinstance(value, accepted) and not isinstance(value, bool)
    else:
        ok = _is(value, tp)
    if not ok:
        raise ConfigError(f"{key} must be {_describe(tp, accepted)}{' or null' if optional else ''}, got {value!r}",
                          fix=f"{key}={_example(f)}")


def _is(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_is(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(tp)
        return isinstance(value, dict) and all(isinstance(k, str) and _is(v, item) for k, v in value.items())
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, tp)


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(tp: Any, accepted: tuple[type, ...] | None = None) -> str:
    if accepted:
        return " or ".join(_WORDS[t] for t in accepted if not (t is int and float in accepted))
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return "a list" if item is Any else f"a list of {_plural(item)}"
    if origin is dict:
        _, item = typing.get_args(tp)
        return "a mapping" if item is Any else f"a mapping of names to {_plural(item)}"
    return _WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, "values")


def _example(f: dataclasses.Field) -> str:
    """The field's default as an override value."""
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        return "[...]" if isinstance(default, list) else "{...}" if isinstance(default, dict) else "..."
    default = f.default
    if default is None:
        return "null"
    if isinstance(default, bool):
        return "true" if default else "false"
    return "..." if default == MISSING else str(default)
