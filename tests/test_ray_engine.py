"""`--engine ray` on a local Ray instance writes exactly what the local engine writes."""

import pytest
import ray

from pipeline.manifest import read_manifest
from pipeline.masks import MasksConfig, make_masks
from pipeline.shards import list_shards


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_shards(sample_image_shards, tmp_path, local_ray):
    def run(engine: str):
        out = tmp_path / engine
        config = MasksConfig(
            images=sample_image_shards, out=out, generator="felzenszwalb",
            options=(("scale", "800"), ("max_regions", "30")), engine=engine, workers=1,
        )
        return make_masks(config), out

    local_summary, local_out = run("local")
    ray_summary, ray_out = run("ray")
    assert ray_summary.written == local_summary.written and ray_summary.complete
    assert [path.name for path in list_shards(ray_out)] == [path.name for path in list_shards(local_out)]
    for path in list_shards(local_out):
        assert (ray_out / path.name).read_bytes() == path.read_bytes()
    assert read_manifest(ray_out).shards == read_manifest(local_out).shards
