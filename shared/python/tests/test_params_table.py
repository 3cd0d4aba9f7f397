"""``params_table`` (written by the Rust crate, checked there by
``cargo test -p tessera-protocol --test params_table``) is where ``JobParams``
takes its defaults: every field, in wire order, and nothing else."""

import dataclasses

from tessera_client import JobParams, Preset, Sampler, params_table


def _as_table(params: JobParams) -> dict:
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    values["preset"] = int(values["preset"])
    values["sampler"] = int(values["sampler"])
    return values


def test_job_params_defaults_are_the_tables_field_by_field_in_wire_order():
    assert list(params_table.DEFAULTS) == [f.name for f in dataclasses.fields(JobParams)]
    assert _as_table(JobParams()) == params_table.DEFAULTS
    assert JobParams().preset is Preset.CLARITY
    assert JobParams().sampler is Sampler.DPMPP_3M_SDE_KARRAS


def test_the_refiners_preset_changes_exactly_the_tables_fields():
    refiners = _as_table(JobParams.refiners())
    changed = {k: v for k, v in refiners.items() if v != params_table.DEFAULTS[k]}
    assert changed == params_table.REFINERS
    assert JobParams.refiners().sampler is Sampler.DPMPP_2M


def test_every_default_is_within_its_range():
    for name, (low, high) in params_table.RANGES.items():
        if name in params_table.DEFAULTS:
            assert low <= params_table.DEFAULTS[name] <= high, name
            assert type(low) is type(params_table.DEFAULTS[name]), name
    for side in ("tile_width", "tile_height"):
        assert params_table.DEFAULTS[side] % params_table.TILE_MULTIPLE == 0
