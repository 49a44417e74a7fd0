"""Tests for medcl.data.geometry: spacing, direction cosines and orientation codes of RAS affines."""

from __future__ import annotations

import numpy as np

from medcl.data.geometry import axis_codes, direction_cosines, format_vector, voxel_spacing


def test_spacing_and_direction_of_a_flipped_anisotropic_affine():
    affine = np.diag([-0.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    np.testing.assert_allclose(voxel_spacing(affine), [0.5, 1.0, 2.0])
    np.testing.assert_allclose(direction_cosines(affine), np.diag([-1.0, 1.0, 1.0]))
    assert axis_codes(affine) == "LAS"
    assert axis_codes(np.eye(4)) == "RAS"


def test_degenerate_affines():
    flat = np.eye(4)
    flat[2, 2] = 0.0
    np.testing.assert_allclose(voxel_spacing(flat), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(direction_cosines(flat), np.diag([1.0, 1.0, 0.0]))  # the zero column is kept
    assert axis_codes(flat) is None
    assert axis_codes(np.full((4, 4), np.nan)) is None


def test_format_vector():
    assert format_vector([1.0, 1.0, 2.5]) == "(1, 1, 2.5)"
    assert format_vector(np.array([0.123456, -3.0])) == "(0.1235, -3)"
