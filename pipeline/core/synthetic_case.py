"""One synthetic MR-like case in a canonical RAS grid (the anatomy of the default dataset).

:func:`make_synthetic_case` draws, from one random stream:

* a "body" ellipsoid of mid intensity on a dark background (Rician noise),
* label 1 ("organ"): a brighter ellipsoid-like organ, radii ~10-16 mm, random
  orientation, smoothly perturbed surface, mild internal heterogeneity,
* label 2 ("lesion"): a smaller (radii ~4-7 mm) darker blob with a speckled
  texture, centred on the organ surface so it partly overlaps it (label 2 wins),
* 0-2 small dark "cyst" distractor blobs in the body, away from the organ, and 1-3
  thin dark "vessels" inside the organ (label 1), both with lesion-like intensity, so
  lesions have to be recognised by shape and context, not by intensity alone,
* partial-volume blur, a smooth multiplicative bias field (up to +-20 %) and Rician
  noise, so no single global threshold separates the classes.

How cases are stored (orientations, gain, dtype, files) is :mod:`pipeline.core.synthetic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["ORGAN_OFFSET_MM", "make_synthetic_case"]

# Relative (pre-gain) tissue intensities; Rician noise sigma is NOISE_SIGMA.
_BACKGROUND = 0.12
_BODY = 1.0
_ORGAN = 1.35
_LESION = 0.66
_NOISE_SIGMA = 0.09

# Nominal offset (mm, RAS) of the organ centre from the volume centre: the organ
# sits right-anterior of centre, so orientation mistakes are detectable.
ORGAN_OFFSET_MM = (5.0, 3.5, 0.0)


# --------------------------------------------------------------------------- helpers
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation matrix (from a random unit quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with an isotropic (in mm) correlation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma_mm / spacing, mode="wrap")
    f -= f.mean()
    f /= f.std() + 1e-8
    return f


def _ellipsoid_distance(coords: np.ndarray, centre: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Normalised ellipsoidal distance (1 on the surface) of world points ``coords``.

    ``coords`` has shape (3, ...) in mm; ``rot`` columns are the ellipsoid axes.
    """
    d = coords - centre.reshape(3, *([1] * (coords.ndim - 1)))
    local = np.tensordot(rot.T, d, axes=1)
    return np.sqrt(np.sum((local / radii.reshape(3, *([1] * (coords.ndim - 1)))) ** 2, axis=0))


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative bias: 2nd-order polynomial, max deviation 10-20 %."""
    u = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    terms = [u[0], u[1], u[2], u[0] * u[1], u[0] * u[2], u[1] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    coef = rng.normal(0.0, 1.0, len(terms))
    coef[:3] *= 2.0  # mostly linear gradients, like a surface coil
    f = sum(c * t for c, t in zip(coef, terms, strict=True))
    f -= f.mean()
    f *= rng.uniform(0.10, 0.20) / (np.abs(f).max() + 1e-8)
    return (1.0 + f).astype(np.float32)


# --------------------------------------------------------------------------- one case
# One random stream per case: the helpers below draw from ``rng`` in a fixed order (grid, body, organ,
# lesion, distractors, vessels, intensities, origin), so the same seed gives the same bytes.


@dataclass(frozen=True)
class _Grid:
    """The case's voxel grid: shape, spacing, field of view (mm), centre voxel, RAS mm coordinates (3, X, Y, Z)."""

    shape: tuple[int, int, int]
    sp: np.ndarray
    fov: np.ndarray
    centre_vox: np.ndarray
    coords: np.ndarray


def _grid(rng: np.random.Generator, sp: np.ndarray) -> _Grid:
    # field of view in mm (about 48-64 in-plane, 45-65 through-plane); at the default
    # spacing (0.8, 0.8, 2.5) this gives ~60-80 x 60-80 x 18-26 voxels
    fov_mm = np.array([rng.uniform(48.0, 64.0), rng.uniform(48.0, 64.0), rng.uniform(45.0, 65.0)])
    shape = tuple(int(max(8, round(f / s))) for f, s in zip(fov_mm, sp, strict=True))
    centre_vox = (np.array(shape) - 1) / 2.0
    # world coordinates relative to the volume centre (mm, RAS)
    axes = [(np.arange(n, dtype=np.float32) - c) * s for n, c, s in zip(shape, centre_vox, sp, strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    return _Grid(shape, sp, sp * np.array(shape), centre_vox, coords)  # type: ignore[arg-type]


def _body(rng: np.random.Generator, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Body: a large ellipsoid extending beyond the slab through-plane; and its inside, away from the wall."""
    fov = g.fov
    body_r = np.array([rng.uniform(0.86, 0.97) * fov[0] / 2, rng.uniform(0.80, 0.92) * fov[1] / 2, 4.0 * fov[2]])
    body_c = np.array([rng.normal(0, 1.0), rng.normal(0, 1.0), 0.0])
    body_d = _ellipsoid_distance(g.coords, body_c, body_r, np.eye(3))
    body_d = body_d + 0.02 * _smooth_field(rng, g.shape, 8.0, g.sp)
    body = body_d < 1.0
    # organ and lesion stay inside the body wall (~2.5 mm)
    inner = ndimage.binary_erosion(body, iterations=3) & (body_d < 0.9)
    return body, inner


def _organ(
    rng: np.random.Generator, g: _Grid, inner: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Organ (label 1) mask, with its centre, semi-axes and rotation."""
    organ_r = rng.uniform(10.0, 16.0, 3)
    organ_rot = _rotation(rng)
    organ_c = np.array(ORGAN_OFFSET_MM) + rng.normal(0.0, [1.5, 1.5, 1.5])
    organ_d = _ellipsoid_distance(g.coords, organ_c, organ_r, organ_rot)
    organ = (organ_d < 1.0 + 0.12 * _smooth_field(rng, g.shape, 6.0, g.sp)) & inner
    organ = ndimage.binary_opening(organ, iterations=1)
    lab, n = ndimage.label(organ)
    if n > 1:  # keep the largest component
        organ = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return organ, organ_c, organ_r, organ_rot


def _lesion(
    rng: np.random.Generator,
    g: _Grid,
    inner: np.ndarray,
    organ: np.ndarray,
    organ_c: np.ndarray,
    organ_r: np.ndarray,
    organ_rot: np.ndarray,
) -> np.ndarray:
    """Lesion (label 2): on the organ surface, partly overlapping it."""
    lesion = fallback = None
    for _attempt in range(200):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        direction = organ_rot @ (v * organ_r)
        direction /= np.linalg.norm(direction)
        # march outwards until leaving the (perturbed) organ
        ts = np.arange(0.0, 40.0, 0.25)
        pts = organ_c[:, None] + direction[:, None] * ts[None, :]
        vox = np.rint(pts / g.sp[:, None] + g.centre_vox[:, None]).astype(int)
        ok = np.all((vox >= 0) & (vox < np.array(g.shape)[:, None]), axis=0)
        inside = np.zeros(ts.shape, dtype=bool)
        inside[ok] = organ[vox[0, ok], vox[1, ok], vox[2, ok]]
        if not inside[0] or inside.all():
            continue
        surf = pts[:, np.argmin(inside)]
        les_r = rng.uniform(4.5, 7.0, 3)
        les_c = surf + direction * rng.uniform(-0.35, 0.25) * les_r.mean()
        # lesion must lie in the slab and inside the body
        margin = les_r.max() + 1.0
        if np.any(np.abs(les_c) + margin > g.fov / 2):
            continue
        les_d = _ellipsoid_distance(g.coords, les_c, les_r, _rotation(rng))
        cand = (les_d < 1.0 + 0.08 * _smooth_field(rng, g.shape, 3.0, g.sp)) & inner
        n_les = int(cand.sum())
        n_out = int((cand & ~organ).sum())
        if fallback is None and 0 < n_out < n_les:
            fallback = cand  # touches the organ; used only if no ideal placement is found
        # must be sizeable, partly inside and partly outside the organ
        if n_les < 0.6 * (4 / 3 * np.pi * np.prod(les_r)) / np.prod(g.sp):
            continue
        if not (0.25 * n_les <= n_out <= 0.85 * n_les):
            continue
        lesion = cand
        break
    if lesion is None:
        if fallback is None:  # pragma: no cover - needs a degenerate field of view
            raise RuntimeError("could not place the lesion; field of view too small for the spacing?")
        lesion = fallback
    return lesion


def _distractors(rng: np.random.Generator, g: _Grid, inner: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Small dark "cysts" in the body, away from organ/lesion, with lesion-like intensity (smaller, detached)."""
    far = ndimage.distance_transform_edt(label == 0, sampling=g.sp) > 6.0
    distract = np.zeros(g.shape, dtype=bool)
    for _ in range(int(rng.integers(0, 3))):
        for _attempt in range(50):
            c = (rng.uniform(-0.5, 0.5, 3) * g.fov * np.array([0.8, 0.8, 0.7])).astype(np.float32)
            r = rng.uniform(1.8, 3.2, 3)
            blob = _ellipsoid_distance(g.coords, c, r, _rotation(rng)) < 1.0
            if blob.any() and np.all(far[blob]) and np.all(inner[blob]):
                distract |= blob
                break
    return distract


def _vessels(rng: np.random.Generator, g: _Grid, label: np.ndarray) -> np.ndarray:
    """Thin dark tubes inside the organ core (still label 1), so organ and lesion intensities overlap and the
    lesion must be recognised by shape/context."""
    core = ndimage.distance_transform_edt(label == 1, sampling=g.sp) > 3.0
    core &= ndimage.distance_transform_edt(label != 2, sampling=g.sp) > 4.0
    vessels = np.zeros(g.shape, dtype=bool)
    core_idx = np.argwhere(core)
    if len(core_idx):
        for _ in range(int(rng.integers(1, 4))):
            a = (core_idx[rng.integers(len(core_idx))] - g.centre_vox) * g.sp
            u = rng.standard_normal(3)
            u /= np.linalg.norm(u)
            rel = g.coords - a.reshape(3, 1, 1, 1).astype(np.float32)
            along = np.tensordot(u, rel, axes=1)
            perp2 = np.sum(rel**2, axis=0) - along**2
            vessels |= perp2 < rng.uniform(0.9, 1.5) ** 2
        vessels &= core
    return vessels


def _intensities(
    rng: np.random.Generator, g: _Grid, label: np.ndarray, body: np.ndarray, distract: np.ndarray, vessels: np.ndarray
) -> np.ndarray:
    """Tissue levels, partial-volume blur (~0.5 mm), multiplicative bias and Rician noise."""
    shape, sp = g.shape, g.sp
    img = np.full(shape, _BACKGROUND, dtype=np.float32)
    body_level = _BODY * rng.uniform(0.95, 1.05)
    img[body] = body_level
    img *= 1.0 + 0.05 * _smooth_field(rng, shape, 5.0, sp) * body  # tissue heterogeneity
    img[distract] = body_level * _LESION * rng.uniform(0.97, 1.03)
    organ_level = body_level * _ORGAN * rng.uniform(0.98, 1.03)
    img[label == 1] = organ_level * (1.0 + 0.04 * _smooth_field(rng, shape, 4.0, sp)[label == 1])
    img[vessels] = body_level * _LESION * rng.uniform(0.97, 1.10)
    les = label == 2
    speckle = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.6)
    speckle /= speckle.std() + 1e-8
    img[les] = body_level * _LESION * rng.uniform(0.97, 1.03) * (1.0 + 0.10 * speckle[les])
    img = ndimage.gaussian_filter(img, sigma=0.5 / sp)
    img *= _bias_field(rng, shape)
    sigma = _NOISE_SIGMA * rng.uniform(0.9, 1.1)
    n1 = rng.normal(0.0, sigma, shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)


def make_synthetic_case(
    rng: np.random.Generator,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one case in a canonical RAS grid.

    Returns ``(image float32, label uint8, affine)``; the affine is RAS (diagonal
    ``spacing``) with a random origin. Image intensities are relative (body ~1).
    """
    g = _grid(rng, np.asarray(spacing, dtype=np.float64))
    body, inner = _body(rng, g)
    organ, organ_c, organ_r, organ_rot = _organ(rng, g, inner)
    lesion = _lesion(rng, g, inner, organ, organ_c, organ_r, organ_rot)
    label = np.zeros(g.shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2  # lesion wins
    distract = _distractors(rng, g, inner, label)
    vessels = _vessels(rng, g, label)
    img = _intensities(rng, g, label, body, distract, vessels)
    # canonical RAS affine with a random origin (world position of the centre)
    centre_world = rng.uniform(-120.0, 120.0, 3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(g.sp)
    affine[:3, 3] = centre_world - g.sp * g.centre_vox
    return img, label, affine
