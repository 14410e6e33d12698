"""Near-uniform grids of rotations for exhaustive orientation searches."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

#: Haar volume of SO(3) in the angle metric.
SO3_VOLUME = 8 * math.pi**2


def super_fibonacci_quaternions(count: int) -> np.ndarray:
    """``count`` unit quaternions (x, y, z, w) spread near-uniformly over SO(3) by the
    super-Fibonacci spiral (Alexa 2022): deterministic, no clustering at the poles."""
    phi = math.sqrt(2.0)
    psi = 1.533751168755204288118041  # real root of x⁴ = x + 4
    s = np.arange(count) + 0.5
    r = np.sqrt(s / count)
    big_r = np.sqrt(1.0 - s / count)
    alpha = 2 * math.pi * s / phi
    beta = 2 * math.pi * s / psi
    return np.stack([r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)], axis=1)


def rotation_grid(angular_step_deg: float) -> np.ndarray:
    """Rotation matrices whose nearest-neighbour spacing is about ``angular_step_deg``
    (one grid point per θ³ of SO(3)'s volume 8π²)."""
    step = math.radians(angular_step_deg)
    count = max(1, math.ceil(SO3_VOLUME / step**3))
    return Rotation.from_quat(super_fibonacci_quaternions(count)).as_matrix()


def mean_nearest_neighbour_angle(matrices: np.ndarray) -> float:
    """Mean angle (degrees) from each rotation to its nearest other rotation in the grid."""
    if len(matrices) < 2:
        return 180.0
    rotations = Rotation.from_matrix(matrices)
    nearest = []
    for i in range(len(matrices)):
        angles = (rotations[i].inv() * rotations).magnitude()
        angles[i] = np.inf
        nearest.append(angles.min())
    return float(np.degrees(np.mean(nearest)))
