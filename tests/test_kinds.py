"""Kinds of architecture behind one interface: each architecture and space finds its kind by `kind`."""

import random

import pytest

from hwnas.errors import ArchitectureError
from hwnas.archs.genotype import ZOO
from hwnas.kinds import KINDS, arch_from_dict, check_kind, kind_of
from hwnas.archs.routed import ROUTED_ZOO
from hwnas.spaces.definition import load_space


def test_every_architecture_and_space_names_its_kind():
    genotype, routed = ZOO["DARTS_V2"], ROUTED_ZOO["DenseNAS-C"]
    assert kind_of(genotype) is KINDS["cell"] is kind_of(load_space("darts_cifar10"))
    assert kind_of(routed) is KINDS["routing"] is kind_of(load_space("densenas_224"))
    assert arch_from_dict(genotype.to_dict()) == genotype and arch_from_dict(routed.to_dict()) == routed
    assert kind_of(routed).text(routed).splitlines()[1].startswith("[16,24]")  # block by block
    assert kind_of(routed).input_shape(routed) == (3, 224) and kind_of(genotype).input_shape(genotype) is None


def test_an_architecture_of_another_kind_is_refused():
    with pytest.raises(ArchitectureError, match="cell architecture does not belong to the routing space"):
        check_kind(load_space("densenas_32_small"), ZOO["DARTS_V2"])
    with pytest.raises(ArchitectureError, match="not an architecture"):
        arch_from_dict({"cells": []})


@pytest.mark.parametrize("space_name", ["darts_cifar10", "densenas_32_small"])
def test_a_sampled_architecture_has_the_keys_and_network_of_its_space(space_name):
    space = load_space(space_name)
    kind = kind_of(space)
    arch = kind.sample(space, random.Random(0))
    assert arch.kind == space.kind
    keys = {key for _, key in kind.arch_keys(space, arch, 1)}
    assert keys <= set(kind.space_keys(space, 1))
    assert not kind.latency_network(space, arch).training
