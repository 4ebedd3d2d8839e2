"""What a synthetic identity and a synthetic image are: traits and nuisances drawn from seeds.

An identity is a vector of stable traits (geometry, colours, moles, beard, glasses); siblings in a
family of `family_size` share part of their trait latents (`trait_similarity`), so near-duplicates
exist and no single coarse cue separates classes. Every image adds nuisances: pose, expression,
lighting, background, blur, noise, occluders and detector jitter.

Every number is a pure function of (seed, identity id, image seed) through SplitMix64
(`data.hashing`), so a face is the same whatever batch it is drawn in, and nothing touches a global
RNG. The difficulty knobs are described in docs/synthetic.md.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Tuple

import numpy as np

from insightface_adadistill.data.hashing import MASK64, splitmix64

Arrays = Dict[str, np.ndarray]  # named per-image arrays (N, ...): traits, nuisances, parts, colours


@dataclass(frozen=True)
class SyntheticFaceConfig:
    """How hard the synthetic faces are. Amplitudes are the values at `nuisance=1`."""

    family_size: int = 4  # identities per family; siblings share part of their traits (near-duplicates)
    trait_similarity: float = 0.6  # correlation of sibling trait latents in [0, 1) (0 unrelated, ->1 twins)
    trait_spread: float = 1.0  # scale of identity deviations from the mean face (smaller = more alike)
    nuisance: float = 1.0  # multiplies every per-image nuisance below (0 = clean, canonical renders)
    yaw_max: float = 0.8  # largest |yaw|; 1 moves eyes/mouth 7 px and the nose 9 px against the outline
    pitch_max: float = 0.5  # largest |pitch|; 1 moves the interior 4 px vertically and squashes it by 10 %
    expression: float = 1.0  # strength of smile, open mouth, blinks, brow raise and gaze
    lighting: float = 0.45  # largest brightness gradient across the image (fraction), also drives gain/cast
    blur_max: float = 1.5  # largest blur, in passes of a 3x3 box filter (half the images stay sharp)
    noise_max: float = 8.0  # largest Gaussian noise sigma, in grey levels
    occlusion_prob: float = 0.25  # chance of an occluder (patch, sunglasses or face mask) per image
    align_jitter: float = 1.0  # detector error of aligned crops; 1 = up to 4 deg, 5 % scale, 2.5 px shift
    unaligned_size: int = 176  # side of the square IJB-style loose crop in pixels
    unaligned_rotation: float = 20.0  # largest in-plane rotation of a loose crop, in degrees
    unaligned_scale: Tuple[float, float] = (0.85, 1.2)  # (min, max) loose-crop face scale vs the aligned crop

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "unaligned_scale":
                if len(value) != 2 or not 0 < value[0] <= value[1]:
                    raise ValueError(f"SyntheticFaceConfig.unaligned_scale={value!r}: expected (min, max) "
                                     "with 0 < min <= max, e.g. (0.85, 1.2)")
            elif not value >= 0:
                raise ValueError(f"SyntheticFaceConfig.{f.name}={value!r} must be >= 0")
        if self.family_size < 1 or not self.trait_similarity < 1:
            raise ValueError(f"SyntheticFaceConfig: family_size={self.family_size} must be >= 1 and "
                             f"trait_similarity={self.trait_similarity} must be in [0, 1)")
        if self.unaligned_size < 64:
            raise ValueError(f"SyntheticFaceConfig.unaligned_size={self.unaligned_size}: use >= 64 px")

    @classmethod
    def difficulty(cls, level: str) -> "SyntheticFaceConfig":
        """Presets: 'easy' (clean, distinct faces), 'medium' (the defaults) or 'hard'."""
        presets = {
            "easy": dict(family_size=1, trait_similarity=0.0, nuisance=0.4, occlusion_prob=0.0),
            "medium": {},
            "hard": dict(trait_similarity=0.75, trait_spread=0.8, nuisance=1.3, occlusion_prob=0.4),
        }
        if level not in presets:
            raise ValueError(f"unknown difficulty {level!r}; choose one of {sorted(presets)}")
        return cls(**presets[level])


_STREAM_FAMILY, _STREAM_IDENTITY, _STREAM_IMAGE = 1, 2, 3
NOISE_STREAM = 4  # seeds the renderer's fixed noise field

def _keys(seed: int, stream: int, *parts: np.ndarray) -> np.ndarray:
    """Hash (seed, stream, part_1, ..., part_k) element-wise to (N,) uint64 keys."""
    key = splitmix64(np.full(np.shape(parts[0]), seed & MASK64, dtype=np.uint64))
    key = splitmix64(key ^ np.uint64(stream))
    for part in parts:
        key = splitmix64(key ^ np.asarray(part).astype(np.uint64))
    return key


def derive_seeds(seed: int, purpose: int, ids: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(N,) uint64 image seeds for (seed, purpose, identity, index): one stream per purpose."""
    return _keys(seed, 16 + purpose, np.asarray(ids), np.asarray(index))


def _uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """(N,) uint64 keys -> (N, count) float64 uniforms in [0, 1), one independent draw per column."""
    columns = splitmix64(np.arange(count, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))
    return (splitmix64(keys[:, None] ^ columns[None, :]) >> np.uint64(11)) * 2.0**-53


def _normals(keys: np.ndarray, count: int) -> np.ndarray:
    """(N,) keys -> (N, count) standard normals by Box-Muller."""
    u = _uniforms(keys, 2 * count)
    return np.sqrt(-2.0 * np.log1p(-u[:, :count])) * np.cos(2 * np.pi * u[:, count:])


# ----------------------------------------------------------------------------------------- traits
# Geometry in canonical pixels (degrees for tilts): (mean, std at trait_spread=1).
_GEOMETRY = {
    "eye_half_gap": (17.62, 1.5), "eye_y": (51.6, 1.5), "nose_y": (71.74, 2.0),
    "mouth_y": (92.28, 2.0), "mouth_half": (14.59, 1.5), "eye_rx": (6.3, 0.8), "eye_ry": (3.3, 0.5),
    "eye_tilt": (0.0, 5.0), "iris_r": (2.8, 0.3), "brow_gap": (8.0, 1.4), "brow_len": (8.5, 1.2),
    "brow_thick": (1.8, 0.45), "brow_tilt": (4.0, 7.0), "nose_half_width": (4.2, 0.7),
    "nostril_r": (1.8, 0.3), "nose_len": (15.0, 3.0), "lip_thick": (2.8, 0.7), "face_rx": (38.0, 2.5),
    "face_ry": (50.0, 3.0), "face_cy": (64.0, 2.0), "chin_taper": (0.28, 0.1), "ear_y": (62.0, 3.0),
    "ear_size": (7.5, 1.2), "hairline_y": (30.0, 6.0), "hair_part": (0.0, 6.0),
    "hair_tilt": (0.0, 8.0), "hair_len": (70.0, 18.0), "hair_volume": (1.1, 0.06),
}
_COLOUR_LATENTS = ("skin_tone", "skin_hue", "hair_dark", "hair_red", "hair_grey", "iris_hue",
                   "lip_tone", "frame_tone")
_MARK_LATENTS = ("mole1", "mole1_x", "mole1_y", "mole2", "mole2_x", "mole2_y", "beard", "glasses")
_LATENTS = tuple(_GEOMETRY) + _COLOUR_LATENTS + _MARK_LATENTS


def _lerp(a, b, t: np.ndarray) -> np.ndarray:
    """Per-row interpolation of RGB rows: (3,) or (N, 3) endpoints, t (N,) -> (N, 3)."""
    return np.asarray(a) + (np.asarray(b) - np.asarray(a)) * t[:, None]


def identity_traits(config: SyntheticFaceConfig, seed: int, ids: np.ndarray) -> Arrays:
    """Stable traits of identities `ids` (N,): geometry (N,), colours (N, 3) in grey levels, marks."""
    ids = np.asarray(ids, dtype=np.int64)
    families = ids // config.family_size
    shared = _normals(_keys(seed, _STREAM_FAMILY, families), len(_LATENTS))
    own = _normals(_keys(seed, _STREAM_IDENTITY, ids), len(_LATENTS))
    rho = config.trait_similarity
    z = dict(zip(_LATENTS, (np.sqrt(rho) * shared + np.sqrt(1 - rho) * own).T))
    spread = config.trait_spread
    t: Arrays = {k: m + s * spread * np.clip(z[k], -2.5, 2.5) for k, (m, s) in _GEOMETRY.items()}
    tone = np.clip(0.5 + 0.22 * spread * z["skin_tone"], 0, 1)
    t["skin"] = _lerp((236, 200, 178), (104, 68, 50), tone) + np.outer(spread * z["skin_hue"],
                                                                       (6, -2, -8))
    hair = _lerp((205, 170, 110), (28, 22, 20), np.clip(0.6 + 0.3 * z["hair_dark"], 0, 1))
    hair = np.clip(hair + np.outer(np.maximum(z["hair_red"] - 0.5, 0), (40, -5, -25)), 10, 245)
    t["hair"] = _lerp(hair, (175, 175, 172), np.clip(z["hair_grey"] - 1.3, 0, 1))
    t["iris"] = _lerp((95, 130, 165), (90, 58, 34), np.clip(0.6 + 0.35 * z["iris_hue"], 0, 1))
    t["lips"] = t["skin"] * (0.92, 0.62, 0.62) + np.outer(z["lip_tone"], (10, 3, 3))
    t["frame"] = _lerp((25, 25, 30), (150, 60, 40), np.clip(z["frame_tone"] - 0.5, 0, 1))
    for mole in ("mole1", "mole2"):  # ~20 % of identities carry each mole, at a fixed place
        t[mole] = (z[mole] > 0.85).astype(np.float64)
        t[mole + "_x"] = 56 + 14 * np.clip(z[mole + "_x"], -1.8, 1.8)
        t[mole + "_y"] = 80 + 10 * np.clip(z[mole + "_y"], -2.0, 1.8)
    t["beard"] = np.where(z["beard"] > 1.0, np.clip(0.45 + 0.3 * (z["beard"] - 1), 0, 0.9), 0.0)
    t["glasses"] = (z["glasses"] > 1.25).astype(np.float64)
    t["family"] = families.astype(np.float64)
    return t


# ------------------------------------------------------------------------------------- nuisances
_NUISANCES = ("yaw", "pitch", "smile", "mouth_open", "blink", "brow_raise", "gaze_x", "gaze_y",
              "light_angle", "light", "gain", "cast_r", "cast_g", "cast_b", "blur", "noise",
              "occluded", "occ_kind", "occ_x", "occ_y", "occ_w", "occ_h", "occ_r", "occ_g", "occ_b",
              "bg_r", "bg_g", "bg_b", "glasses_off", "rot", "scale", "shift_x", "shift_y",
              "noise_x", "noise_y", "noise_sign")


def image_nuisances(config: SyntheticFaceConfig, seed: int, ids: np.ndarray, image_seeds: np.ndarray) -> Arrays:
    """Per-image draws (N,) in [0, 1), keyed by (seed, identity, image seed), named by `_NUISANCES`."""
    u = _uniforms(_keys(seed, _STREAM_IMAGE, ids, image_seeds), len(_NUISANCES))
    return dict(zip(_NUISANCES, u.T))
