"""The config schema (core/settings.py): every shipped config fits it, the typed view reads the same
values as the dict, and keys or types the schema does not know are refused at load with the valid
keys, closest first."""

from __future__ import annotations

import copy
import json
import warnings

import pytest

from grail_cluster.core import config
from grail_cluster.core.errors import ConfigError
from grail_cluster.core.settings import (
    CLUSTERS,
    KubernetesCluster,
    LocalCluster,
    Settings,
    SlurmCluster,
    check_settings,
    settings,
)
from tests.conftest import base_overrides

REQUIRED = ["data.motion_lib=/lib", "sonic.root=/sonic"]
PIPELINES = ["pnp_table", "pnp_ground", "advanced_manip_table", "advanced_manip_ground", "terrain_tracking"]
CLUSTER_OVERRIDES = {"local": [], "slurm": ["cluster=slurm"],
                     "kubernetes": ["cluster=kubernetes", "cluster.image=registry.example/grail:1"]}


def _composed(*extra: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Hydra's plugin scan
        return config.to_dict(config.compose([*REQUIRED, *extra]))


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("backend", sorted(CLUSTER_OVERRIDES))
@pytest.mark.parametrize("trainer", ["sonic", "reference"])
def test_every_shipped_config_fits_the_schema(pipeline, backend, trainer):
    c = _composed(f"pipeline={pipeline}", f"trainer={trainer}", *CLUSTER_OVERRIDES[backend])
    before = copy.deepcopy(c)
    check_settings(c)
    s = settings(c)
    assert c == before  # neither the check nor the view touches the dict plan.json holds
    assert isinstance(s.cluster, CLUSTERS[backend]) and s.cluster.backend == backend
    assert s.pipeline.name == pipeline and s.pipeline.needs.bps == c["pipeline"]["needs"]["bps"]
    assert s.eval.num_shards == c["eval"]["num_shards"] and s.train.finetune.mode == c["train"]["finetune"]["mode"]
    assert s.resources.eval.cpus == c["resources"]["eval"]["cpus"]
    assert s.sonic.env == c["sonic"]["env"] and s.select.min_sr == c["select"]["min_sr"]


def test_the_view_is_typed_and_read_only():
    s = settings(_composed("cluster=slurm", "cluster.account=4711", "run.id=2024"))
    assert isinstance(s, Settings) and isinstance(s.cluster, SlurmCluster)
    assert s.cluster.account == 4711 and s.run.id == 2024  # as Hydra parsed them: accepted, as before
    with pytest.raises(AttributeError):
        s.eval.num_shards = 3  # type: ignore[misc]


def test_the_view_of_an_older_plan_config_fills_defaults_and_ignores_removed_keys():
    s = settings({"eval": {"num_shards": 3, "gone": 1}, "cluster": {"backend": "kubernetes"}})
    assert s.eval.num_shards == 3 and s.eval.sharding == "sonic_block"
    assert isinstance(s.cluster, KubernetesCluster) and s.cluster.driver.poll_seconds == 15
    assert isinstance(settings({}).cluster, LocalCluster)


@pytest.mark.parametrize(("where", "key", "first"), [
    (("eval",), "nmu_shards", "num_shards"),
    (("train", "finetune"), "checkpiont", "checkpoint"),
    (("cluster",), "partion", "partition"),
    ((), "evall", "eval"),
])
def test_an_unknown_key_is_refused_with_the_valid_keys_closest_first(where, key, first):
    c = _composed("cluster=slurm")
    node = c
    for part in where:
        node = node[part]
    node[key] = 1
    with pytest.raises(ConfigError) as exc:
        check_settings(c)
    full = ".".join([*where, key])
    text = str(exc.value)
    assert f"`{full}` is not a grail-cluster setting" in text
    prefix = ".".join([*where, first])
    assert f"did you mean `{prefix}`?" in text
    listing = text.split(" are: ", 1)[1]
    assert listing.startswith(first + ",")


def test_a_slurm_key_under_another_backend_is_unknown():
    c = _composed()
    c["cluster"]["partition"] = "gpu"
    with pytest.raises(ConfigError, match="`cluster.partition` is not a grail-cluster setting"):
        check_settings(c)


@pytest.mark.parametrize(("override", "needle", "fix"), [
    ("train.smoke=maybe", "train.smoke must be true or false, got 'maybe'", "train.smoke=false"),
    ("render.camera_offset=[a,b,c]", "render.camera_offset must be a list of numbers", "render.camera_offset=[...]"),
    ("sonic.setup=[1,2]", "sonic.setup must be a list of strings", "sonic.setup=[...]"),
    ("cluster.check_limits=3", "cluster.check_limits must be true or false, got 3", "cluster.check_limits=true"),
    ("export.obj_pos_threshold=far", "export.obj_pos_threshold must be a number or null", "=null"),
    ("web.title=[a]", "web.title must be a string or a number or null", "web.title=null"),
])
def test_a_wrong_type_is_refused_at_load_with_a_fix(tmp_path, hoi_pair, sonic_root, override, needle, fix):
    _, ha = hoi_pair
    extra = ["cluster=slurm", "cluster.check_limits=false"] if override.startswith("cluster.") else []
    with pytest.raises(ConfigError) as exc:
        config.load(base_overrides(tmp_path, ha.root, sonic_root, *extra, override))
    assert needle in str(exc.value) and fix in str(exc.value)


def test_value_rules_keep_their_own_words(tmp_path, hoi_pair, sonic_root):
    """check_values runs before the schema: its messages name the rule, not only the type."""
    _, ha = hoi_pair
    with pytest.raises(ConfigError) as exc:
        config.load(base_overrides(tmp_path, ha.root, sonic_root, "eval.num_shards=abc"))
    assert "eval.num_shards must be an integer >= 1, got 'abc'" in str(exc.value)


def test_load_returns_the_plain_composed_dict(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, "select.min_sr=1"))
    assert type(c) is dict and c["select"]["min_sr"] == 1 and json.dumps(c["select"]["min_sr"]) == "1"


def test_the_schema_is_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore

    _composed()
    repo = ConfigStore.instance().repo
    assert "grail_schema.yaml" in repo
    assert set(repo["grail_schema"]["cluster"]) == {f"{b}.yaml" for b in CLUSTERS}
