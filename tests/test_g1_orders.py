"""The product's G1 joint tables against contracts §1.8, written out independently in tests/g1_orders.py.

Three readings meet here: the contract's name lists, the contract's two permutation lists, and the G1
model itself (MuJoCo's depth-first joint order, and a breadth-first walk of its body tree, which is how
IsaacLab/PhysX orders an articulation's joints).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import deque

import numpy as np
import pytest

from grail_cluster.tools.data import g1
from tests import g1_orders as c


def test_contract_lists_agree_with_each_other():
    assert len(c.MUJOCO_JOINTS) == len(set(c.MUJOCO_JOINTS)) == 29
    assert len(c.ISAACLAB_JOINTS) == len(set(c.ISAACLAB_JOINTS)) == 29
    assert set(c.MUJOCO_JOINTS) == set(c.ISAACLAB_JOINTS)
    # The verbatim permutation lists are exactly what the name lists imply.
    assert list(c.MUJOCO_TO_ISAACLAB_DOF) == c.mujoco_to_isaaclab_by_name()
    assert list(c.ISAACLAB_TO_MUJOCO_DOF) == c.isaaclab_to_mujoco_by_name()
    assert len(c.HAND_JOINTS) == len(set(c.HAND_JOINTS)) == 14


@pytest.mark.parametrize("product, contract", [
    ("G1_MUJOCO_JOINTS", "MUJOCO_JOINTS"),
    ("G1_ISAACLAB_JOINTS", "ISAACLAB_JOINTS"),
    ("G1_ISAACLAB_TO_MUJOCO_DOF", "ISAACLAB_TO_MUJOCO_DOF"),
    ("G1_MUJOCO_TO_ISAACLAB_DOF", "MUJOCO_TO_ISAACLAB_DOF"),
    ("G1_HAND_JOINTS", "HAND_JOINTS"),
])
def test_product_table_is_the_contract(product, contract):
    assert tuple(getattr(g1, product)) == getattr(c, contract)


def test_product_permutations_move_named_columns():
    # A row whose every column holds its joint's name, reordered by the product's tables.
    mujoco = np.array([c.MUJOCO_JOINTS])
    isaac = mujoco[:, list(g1.G1_MUJOCO_TO_ISAACLAB_DOF)]
    assert tuple(isaac[0]) == c.ISAACLAB_JOINTS
    assert tuple(np.array([c.ISAACLAB_JOINTS])[:, list(g1.G1_ISAACLAB_TO_MUJOCO_DOF)][0]) == c.MUJOCO_JOINTS


def _body_tree():
    root = ET.parse(g1.g1_mjcf_path()).getroot().find("worldbody")
    pelvis = root.find("body")
    assert pelvis is not None
    return pelvis


def _hinges(body):
    return [j.get("name") for j in body.findall("joint") if j.get("type", "hinge") == "hinge"]


def test_g1_model_orders_are_the_contract():
    pelvis = _body_tree()
    depth_first = [n for b in pelvis.iter("body") for n in _hinges(b)]
    breadth_first, queue = [], deque([pelvis])
    while queue:
        body = queue.popleft()
        breadth_first += _hinges(body)
        queue.extend(body.findall("body"))
    body_joints = set(c.MUJOCO_JOINTS)
    assert [n for n in depth_first if n in body_joints] == list(c.MUJOCO_JOINTS)
    assert [n for n in breadth_first if n in body_joints] == list(c.ISAACLAB_JOINTS)
