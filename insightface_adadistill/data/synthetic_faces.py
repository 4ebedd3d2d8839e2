"""Procedural face identities: a synthetic stand-in for MS1M, LFW-style `.bin` sets and IJB.

An identity is a vector of stable traits: the geometry of eyes, brows, nose, mouth, face outline, ears
and hairline, the skin, hair, iris and lip colours, moles, a beard and glasses. Identities come in
families of `family_size` siblings whose trait latents are correlated by `trait_similarity`, so
near-duplicates exist and a classifier cannot separate classes by one coarse cue. Every image adds
nuisances: yaw and pitch (interior features move against the outline), expression (smile, open
mouth, blink, brow raise, gaze), a lighting gradient with colour cast, background colour, blur,
sensor noise, occluders (patch, sunglasses, face mask) and detector jitter of the alignment.

Every number is a pure function of (seed, identity id, image seed) through a splitmix64 hash, so a
face renders to the same bytes whatever batch it is in, and nothing touches a global RNG. Parts are
soft-edged ellipses evaluated in the canonical frame (the 112x112 ArcFace crop coordinates) and
painted back to front into a planar float32 canvas (N, 3, H, W), each only inside the pixel box it
can reach in this batch; pixels see only +, -, *, / and clip. numpy only, ~2000+ aligned faces/s on
one core: no assets, no OpenCV.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

import numpy as np

ALIGNED_SIZE = 112
# (x, y) of left eye, right eye, nose tip, left and right mouth corner in the aligned crop (spec 6.2).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float64)
_EYE_CX = float(ARCFACE_TEMPLATE[:2, 0].mean())
_NOSE_X = float(ARCFACE_TEMPLATE[2, 0])
_MOUTH_CX = float(ARCFACE_TEMPLATE[3:, 0].mean())
_FACE_ANCHOR = np.array([56.0, 68.0])  # canonical point placed at the canvas centre when unaligned
_CHUNK = 64  # images per vectorised pass: bounds the union of part boxes and the memory

Traits = Dict[str, np.ndarray]


@dataclass(frozen=True)
class SyntheticFaceConfig:
    """How hard the synthetic faces are. Amplitudes are the values at `nuisance=1`.

    Attributes:
        family_size: identities per family; siblings share part of their traits (near-duplicates).
        trait_similarity: correlation of sibling trait latents in [0, 1) (0 unrelated, ->1 twins).
        trait_spread: scale of identity deviations from the mean face (smaller = more alike).
        nuisance: multiplies every per-image nuisance below (0 = clean, canonical renders).
        yaw_max: largest |yaw|; 1 moves eyes/mouth 7 px and the nose 9 px against the outline.
        pitch_max: largest |pitch|; 1 moves the interior 4 px vertically and squashes it by 10 %.
        expression: strength of smile, open mouth, blinks, brow raise and gaze.
        lighting: largest brightness gradient across the image (fraction), also drives gain/cast.
        blur_max: largest blur, in passes of a 3x3 box filter (half the images stay sharp).
        noise_max: largest Gaussian noise sigma, in grey levels.
        occlusion_prob: chance of an occluder (patch, sunglasses or face mask) per image.
        align_jitter: detector error of aligned crops; 1 = up to 4 deg, 5 % scale, 2.5 px shift.
        unaligned_size: side of the square IJB-style loose crop in pixels.
        unaligned_rotation: largest in-plane rotation of a loose crop, in degrees.
        unaligned_scale: (min, max) face scale of a loose crop relative to the aligned crop.
    """

    family_size: int = 4
    trait_similarity: float = 0.6
    trait_spread: float = 1.0
    nuisance: float = 1.0
    yaw_max: float = 0.8
    pitch_max: float = 0.5
    expression: float = 1.0
    lighting: float = 0.45
    blur_max: float = 1.5
    noise_max: float = 8.0
    occlusion_prob: float = 0.25
    align_jitter: float = 1.0
    unaligned_size: int = 176
    unaligned_rotation: float = 20.0
    unaligned_scale: Tuple[float, float] = (0.85, 1.2)

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


# ---------------------------------------------------------------------------------------- hashing
_STREAM_FAMILY, _STREAM_IDENTITY, _STREAM_IMAGE, _STREAM_NOISE = 1, 2, 3, 4


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a fast, well-mixed hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _keys(seed: int, stream: int, *parts: np.ndarray) -> np.ndarray:
    """Hash (seed, stream, part_1, ..., part_k) element-wise to (N,) uint64 keys."""
    key = _splitmix64(np.full(np.shape(parts[0]), seed & (2**64 - 1), dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(stream))
    for part in parts:
        key = _splitmix64(key ^ np.asarray(part).astype(np.uint64))
    return key


def derive_seeds(seed: int, purpose: int, ids: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(N,) uint64 image seeds for (seed, purpose, identity, index): one stream per purpose."""
    return _keys(seed, 16 + purpose, np.asarray(ids), np.asarray(index))


def _uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """(N,) uint64 keys -> (N, count) float64 uniforms in [0, 1), one independent draw per column."""
    columns = _splitmix64(np.arange(count, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))
    return (_splitmix64(keys[:, None] ^ columns[None, :]) >> np.uint64(11)) * 2.0**-53


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


def identity_traits(config: SyntheticFaceConfig, seed: int, ids: np.ndarray) -> Traits:
    """Stable traits of identities `ids` (N,): geometry (N,), colours (N, 3) in grey levels, marks."""
    ids = np.asarray(ids, dtype=np.int64)
    families = ids // config.family_size
    shared = _normals(_keys(seed, _STREAM_FAMILY, families), len(_LATENTS))
    own = _normals(_keys(seed, _STREAM_IDENTITY, ids), len(_LATENTS))
    rho = config.trait_similarity
    z = dict(zip(_LATENTS, (np.sqrt(rho) * shared + np.sqrt(1 - rho) * own).T))
    spread = config.trait_spread
    t: Traits = {k: m + s * spread * np.clip(z[k], -2.5, 2.5) for k, (m, s) in _GEOMETRY.items()}
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


def image_nuisances(config: SyntheticFaceConfig, seed: int, ids: np.ndarray,
                    image_seeds: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-image draws (N,) in [0, 1), keyed by (seed, identity, image seed), named by `_NUISANCES`."""
    u = _uniforms(_keys(seed, _STREAM_IMAGE, ids, image_seeds), len(_NUISANCES))
    return dict(zip(_NUISANCES, u.T))


# -------------------------------------------------------------------------------------- geometry
def _xy(x, y) -> np.ndarray:
    """Stack per-image x and y (scalars or (N,)) into (N, 2) points."""
    return np.stack(np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64)), 1)


def _face_parts(config: SyntheticFaceConfig, t: Traits,
                u: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Canonical positions/sizes of this image's parts after pose and expression; (N,) or (N, 2).

    Yaw slides the interior (eyes, nose, mouth) against the outline and foreshortens the far eye;
    pitch slides and squashes it vertically about the nose. `landmarks` (N, 5, 2) follow the parts.
    """
    k = config.nuisance
    yaw = (2 * u["yaw"] - 1) * config.yaw_max * k
    pitch = (2 * u["pitch"] - 1) * config.pitch_max * k
    expr = config.expression * k
    smile = (1.3 * u["smile"] - 0.65) * expr  # symmetric: the mean face keeps the template shape
    mouth_open = np.minimum(u["mouth_open"] ** 2 * expr, 1.0)
    narrow = 1 - 0.1 * yaw ** 2

    def vertical(y: np.ndarray) -> np.ndarray:
        return t["nose_y"] + (y - t["nose_y"]) * (1 - 0.1 * np.abs(pitch)) + 4 * pitch

    p = {"yaw": yaw, "pitch": pitch, "mouth_open": mouth_open,
         "eye_open": np.clip(1 - 0.85 * u["blink"] ** 4 * expr, 0.15, 1.0),
         "brow_raise": (2 * u["brow_raise"] - 1) * 2.0 * expr,
         "gaze": _xy((2 * u["gaze_x"] - 1) * 1.2 * expr, (2 * u["gaze_y"] - 1) * 0.6 * expr),
         "eye_half": t["eye_half_gap"] * narrow, "eye_y": vertical(t["eye_y"]),
         "nose": _xy(_NOSE_X + 9 * yaw, vertical(t["nose_y"])),
         "mouth": _xy(_MOUTH_CX + 7 * yaw, vertical(t["mouth_y"])),
         "mouth_half": t["mouth_half"] * narrow + 1.5 * smile, "mouth_bend": 0.012 * smile}
    p["eye_l"] = _xy(_EYE_CX + 7 * yaw - p["eye_half"], p["eye_y"])
    p["eye_r"] = _xy(_EYE_CX + 7 * yaw + p["eye_half"], p["eye_y"])
    corner_dy = -p["mouth_bend"] * p["mouth_half"] ** 2  # a smile lifts the corners
    corners = [_xy(p["mouth"][:, 0] + sign * p["mouth_half"], p["mouth"][:, 1] + corner_dy)
               for sign in (-1, 1)]
    p["landmarks"] = np.stack([p["eye_l"], p["eye_r"], p["nose"], *corners], 1)  # (N, 5, 2)
    return p


def _fit_similarity(src: np.ndarray, dst: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity z -> m*z + t (complex form) mapping src (N, K, 2) onto dst (K, 2)."""
    zs = src[..., 0] + 1j * src[..., 1]  # (N, K)
    zd = dst[:, 0] + 1j * dst[:, 1]  # (K,)
    cs, cd = zs - zs.mean(1, keepdims=True), zd - zd.mean()
    m = (np.conj(cs) * cd).sum(1) / (np.abs(cs) ** 2).sum(1)
    return m, zd.mean() - m * zs.mean(1)


class _Canvas:
    """A batch of planar float32 images (N, 3, H, W) plus the canonical (u, v) of every pixel.

    The pose is the similarity z_out = m * z_canonical + t (complex, (N,)); parts are given in the
    canonical frame and rasterised in output pixels, whose centres sit at integer coordinates. A mask
    is (images, rows, cols, alpha): `images` is None for all images or the indices of the images the
    part appears in (a beard, glasses, an occluder), so rare parts cost only where they are drawn.
    """

    def __init__(self, m: np.ndarray, t: np.ndarray, size: int, background: np.ndarray) -> None:
        self.m, self.t, self.size = m, t, size
        self.scale = np.abs(m)  # output px per canonical px
        inv = 1 / m
        xs = (np.arange(size)[None, :] - t.real[:, None]).astype(np.float32)  # (N, W)
        ys = (np.arange(size)[None, :] - t.imag[:, None]).astype(np.float32)  # (N, H)
        re, im = (x.astype(np.float32)[:, None] for x in (inv.real, inv.imag))
        self.u = (re * xs)[:, None, :] - (im * ys)[:, :, None]  # (N, H, W)
        self.v = (im * xs)[:, None, :] + (re * ys)[:, :, None]  # (N, H, W)
        self.image = np.empty((len(m), 3, size, size), np.float32)
        self.image[:] = background.astype(np.float32)[:, :, None, None]
        # Reused scratch: fresh multi-MB temporaries per operation cost page faults (~25 % of the time).
        self._plane = len(m) * size * size
        self._scratch = np.empty(4 * self._plane, np.float32)
        self._delta = np.empty(3 * self._plane, np.float32)

    def _planes(self, shape: Tuple[int, int, int]):
        """Four disjoint float32 scratch arrays of `shape` (n, h, w)."""
        count = shape[0] * shape[1] * shape[2]
        return [self._scratch[i * self._plane:i * self._plane + count].reshape(shape) for i in range(4)]

    def _select(self, active: np.ndarray, half: np.ndarray, centre: np.ndarray):
        """(images, rows, cols): the active images and the pixel box all their parts fit in."""
        if not active.any():
            return None
        images = None if active.all() else np.flatnonzero(active)
        c = self.m * (centre[:, 0] + 1j * centre[:, 1]) + self.t
        lo, hi = (c - half[:, 0] - 1j * half[:, 1])[active], (c + half[:, 0] + 1j * half[:, 1])[active]
        r0 = max(int(np.floor(lo.imag.min())) - 1, 0)
        r1 = min(int(np.ceil(hi.imag.max())) + 2, self.size)
        c0 = max(int(np.floor(lo.real.min())) - 1, 0)
        c1 = min(int(np.ceil(hi.real.max())) + 2, self.size)
        return (images, slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None

    def _local(self, where, centre: np.ndarray, angle: Optional[np.ndarray]):
        """Scratch planes (a, b, s1, s2): a, b are the pixels' canonical offsets from `centre`
        (n, 2), rotated by `angle` (n,) degrees into the part's frame; s1, s2 are free."""
        images, rows, cols = where
        pick = slice(None) if images is None else images
        u, v = self.u[pick, rows, cols], self.v[pick, rows, cols]
        a, b, s1, s2 = self._planes(u.shape)
        np.subtract(u, centre[:, 0, None, None].astype(np.float32), out=a)
        np.subtract(v, centre[:, 1, None, None].astype(np.float32), out=b)
        if angle is not None:
            cos, sin = (f(np.deg2rad(angle)).astype(np.float32)[:, None, None] for f in (np.cos, np.sin))
            np.multiply(a, sin, out=s1)
            np.multiply(b, sin, out=s2)
            a *= cos
            a += s2  # a cos + b sin
            b *= cos
            b -= s1  # b cos - a sin
        return a, b, s1, s2

    def ellipse(self, centre: np.ndarray, radii: np.ndarray, *, angle: Optional[np.ndarray] = None,
                bend: Optional[np.ndarray] = None, taper: Optional[np.ndarray] = None,
                hollow: Optional[float] = None, cut_y: Optional[np.ndarray] = None,
                opacity: Optional[np.ndarray] = None):
        """Soft mask of an ellipse, or None when it touches no pixel.

        `bend` curves the long axis (centre line y = -bend * x^2, a smile), `taper` narrows the lower
        half (a chin), `hollow` keeps a ring of that relative thickness, `cut_y` drops rows below it.
        """
        rx, ry = radii[:, 0], radii[:, 1]
        reach_y = ry + (np.abs(bend) * rx ** 2 if bend is not None else 0)
        theta = np.angle(self.m) + (np.deg2rad(angle) if angle is not None else 0)
        half = self.scale[:, None] * np.stack([np.hypot(rx * np.cos(theta), reach_y * np.sin(theta)),
                                               np.hypot(rx * np.sin(theta), reach_y * np.cos(theta))], 1)
        active = (rx > 0) & (ry > 0) & (opacity > 0 if opacity is not None else True)
        where = self._select(active, half, centre)
        if where is None:
            return None
        images = where[0]

        def own(x):  # this part's per-image parameter as float32 (n, 1, 1)
            x = x if images is None else x[images]
            return x.astype(np.float32)[:, None, None]

        a, b, s1, _ = self._local(where, centre if images is None else centre[images],
                                  None if angle is None else angle if images is None else angle[images])
        inv_rx, inv_ry = own(1 / np.maximum(rx, 1e-3)), own(1 / np.maximum(ry, 1e-3))
        if bend is not None:
            np.multiply(a, a, out=s1)
            s1 *= own(bend)
            b += s1
        if taper is not None:  # a / (1 - taper * clip(b / ry, 0, 1))
            np.multiply(b, inv_ry, out=s1)
            np.clip(s1, 0, 1, out=s1)
            s1 *= own(-taper)
            s1 += 1
            a /= s1
        a *= inv_rx
        b *= inv_ry
        q = np.square(a, out=a)
        q += np.square(b, out=b)
        sharp = own(0.5 * np.minimum(rx, ry) * self.scale + 0.5)
        alpha = np.subtract(1, q)
        alpha *= sharp
        np.clip(alpha, 0, 1, out=alpha)
        if hollow is not None:
            q -= np.float32((1 - hollow) ** 2)
            q *= sharp
            alpha *= np.clip(q, 0, 1, out=q)
        if cut_y is not None:
            rows_v = self.v[slice(None) if images is None else images, where[1], where[2]]
            np.subtract(own(cut_y), rows_v, out=s1)
            s1 *= own(self.scale)
            alpha *= np.clip(s1, 0, 1, out=s1)
        if opacity is not None:
            alpha *= own(opacity)
        return (*where, alpha)

    def rectangle(self, centre: np.ndarray, half: np.ndarray, opacity: np.ndarray):
        """Soft mask of a canonical-frame rectangle with half sides `half` (N, 2); like `ellipse`."""
        theta = np.angle(self.m)
        c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
        reach = self.scale[:, None] * _xy(half[:, 0] * c + half[:, 1] * s, half[:, 0] * s + half[:, 1] * c)
        where = self._select(opacity > 0, reach, centre)
        if where is None:
            return None
        pick = slice(None) if where[0] is None else where[0]
        du, dv, _, _ = self._local(where, centre[pick], None)
        px = self.scale[pick].astype(np.float32)[:, None, None]
        for d, h in ((du, half[pick, 0]), (dv, half[pick, 1])):  # (half - |d|) * px, clipped to [0, 1]
            np.abs(d, out=d)
            np.subtract(h.astype(np.float32)[:, None, None], d, out=d)
            d *= px
            np.clip(d, 0, 1, out=d)
        alpha = du * dv
        return (*where, alpha * opacity[pick].astype(np.float32)[:, None, None])

    def paint(self, mask, colour: np.ndarray) -> None:
        """Blend `colour` (N, 3) over the canvas through `mask` (from `ellipse`/`rectangle`)."""
        if mask is None:
            return
        images, rows, cols, alpha = mask
        if images is None:
            region = self.image[:, :, rows, cols]  # view (N, 3, h, w), blended in place
        else:
            region = self.image[images, :, rows, cols]  # copy (n, 3, h, w), written back below
            colour = colour[images]
        delta = self._delta[:region.size].reshape(region.shape)
        np.subtract(colour.astype(np.float32)[:, :, None, None], region, out=delta)
        delta *= alpha[:, None]
        region += delta
        if images is not None:
            self.image[images, :, rows, cols] = region

    def light(self, slope_x: np.ndarray, slope_y: np.ndarray) -> None:
        """Multiply by a linear lighting ramp 1 + slope_x * x + slope_y * y, with x, y in [-1, 1]."""
        ramp = np.linspace(-1, 1, self.size, dtype=np.float32)
        shade = self._planes((len(self.m), self.size, self.size))[0]
        np.add((slope_x.astype(np.float32)[:, None] * ramp)[:, None, :],
               (slope_y.astype(np.float32)[:, None] * ramp)[:, :, None], out=shade)
        shade += 1
        self.image *= shade[:, None]

    def blur(self, amount: np.ndarray) -> None:
        """Blur by `amount` (N,) passes of the separable kernel [w, 1 - 2w, w], w <= 1/3 (a 3x3 box).

        Pass k uses w = clip(amount - k, 0, 1) / 3, so the blur grows continuously with `amount`; the
        outermost pixels keep their value. Only the images that blur are touched.
        """
        for k in range(int(np.ceil(amount.max(initial=0)))):
            weight = np.clip(amount - k, 0, 1)
            images = np.flatnonzero(weight > 0)
            sub = self.image[images]  # (n, 3, H, W) copy
            w = (weight[images] / 3).astype(np.float32)[:, None, None, None]
            for axis in (3, 2):
                inner, left, right = ([slice(None)] * 4 for _ in range(3))
                inner[axis], left[axis], right[axis] = slice(1, -1), slice(None, -2), slice(2, None)
                centre = sub[tuple(inner)]
                delta = self._delta[:centre.size].reshape(centre.shape)
                np.add(sub[tuple(left)], sub[tuple(right)], out=delta)
                delta -= centre
                delta -= centre
                delta *= w
                centre += delta
            self.image[images] = sub

    def add_noise(self, bank: np.ndarray, offsets: np.ndarray, sigma: np.ndarray) -> None:
        """Add `sigma` (N,) times the window of the noise `bank` (3, B, B) at `offsets` (N, 2) (y, x)."""
        size = self.size
        scratch = self._delta[:3 * size * size].reshape(3, size, size)
        for image, (y, x), s in zip(self.image, offsets, sigma.astype(np.float32)):
            np.multiply(bank[:, y:y + size, x:x + size], s, out=scratch)
            image += scratch

    def to_uint8(self) -> np.ndarray:
        """Round and clip to uint8 (N, H, W, 3) RGB."""
        self.image += 0.5
        np.clip(self.image, 0, 255, out=self.image)
        planar = self.image.astype(np.uint8)
        rgb = np.empty((len(planar), self.size, self.size, 3), np.uint8)
        for channel in range(3):  # three strided copies beat one 4-D transpose by ~3x
            rgb[..., channel] = planar[:, channel]
        return rgb


def _clipped(mask, clip):
    """`mask` restricted to where `clip` (drawn on every image) is painted: iris in eye, beard in face."""
    if mask is None or clip is None:
        return None
    images, rows, cols, alpha = mask
    _, clip_rows, clip_cols, clip_alpha = clip
    r0, r1 = max(rows.start, clip_rows.start), min(rows.stop, clip_rows.stop)
    c0, c1 = max(cols.start, clip_cols.start), min(cols.stop, clip_cols.stop)
    if r0 >= r1 or c0 >= c1:
        return None
    own = alpha[:, r0 - rows.start:r1 - rows.start, c0 - cols.start:c1 - cols.start]
    rows_in_clip = slice(r0 - clip_rows.start, r1 - clip_rows.start)
    cols_in_clip = slice(c0 - clip_cols.start, c1 - clip_cols.start)
    other = clip_alpha[slice(None) if images is None else images, rows_in_clip, cols_in_clip]
    return images, slice(r0, r1), slice(c0, c1), own * other


# ------------------------------------------------------------------------------------- rendering
def _paint_head(canvas: _Canvas, t: Traits, p: Dict[str, np.ndarray],
                rgb: Dict[str, np.ndarray]) -> None:
    """Back hair, neck, ears, face outline (tapered to the chin), beard and fringe, back to front."""
    yaw, pitch = p["yaw"], p["pitch"]
    face_c = _xy(56 + 2 * yaw, t["face_cy"] + 1.5 * pitch)
    face_rx = t["face_rx"] * (1 - 0.05 * yaw ** 2)
    hair_back = canvas.ellipse(_xy(56 - 2 * yaw, t["face_cy"] - 6),
                               _xy(face_rx * t["hair_volume"] + 3, t["face_ry"] + 4), cut_y=t["hair_len"])
    canvas.paint(hair_back, rgb["hair"])
    neck = canvas.ellipse(_xy(56 + yaw, face_c[:, 1] + 0.85 * t["face_ry"]),
                          _xy(0.5 * face_rx, 0.5 * t["face_ry"]))
    canvas.paint(neck, rgb["skin"] * 0.82)
    for side in (-1, 1):  # the ear on the side the face turns away from hides behind it
        ear = canvas.ellipse(_xy(face_c[:, 0] + side * (face_rx - 1), t["ear_y"] + 2 * pitch),
                             _xy(0.5 * t["ear_size"], t["ear_size"]),
                             opacity=np.clip(1 - 2 * side * yaw, 0, 1))
        canvas.paint(ear, rgb["skin"] * 0.9)
    face = canvas.ellipse(face_c, _xy(face_rx, t["face_ry"]), taper=t["chin_taper"])
    canvas.paint(face, rgb["skin"])
    beard = canvas.ellipse(_xy(p["mouth"][:, 0], p["mouth"][:, 1] + 8),
                           _xy(0.78 * face_rx, 0.42 * t["face_ry"]), opacity=t["beard"])
    canvas.paint(_clipped(beard, face), rgb["hair"] * 0.8)
    fringe = canvas.ellipse(_xy(56 + t["hair_part"] + 3 * yaw, t["hairline_y"] - 24 + 3 * pitch),
                            _xy(1.04 * face_rx, np.full_like(yaw, 24)), angle=t["hair_tilt"])
    canvas.paint(fringe, rgb["hair"])


def _paint_eyes(canvas: _Canvas, t: Traits, p: Dict[str, np.ndarray], rgb: Dict[str, np.ndarray]) -> None:
    """Brows, eyes (sclera, iris and pupil clipped to the eyelids) and glasses frames."""
    yaw = p["yaw"]
    for side, eye in ((-1, p["eye_l"]), (1, p["eye_r"])):
        far = 1 - 0.3 * np.maximum(side * yaw, 0)  # foreshortening of the eye turning away
        brow = canvas.ellipse(_xy(eye[:, 0], eye[:, 1] - t["brow_gap"] - p["brow_raise"]),
                              _xy(t["brow_len"] * far, t["brow_thick"]), angle=-side * t["brow_tilt"])
        canvas.paint(brow, rgb["hair"] * 0.75)
        sclera = canvas.ellipse(eye, _xy(t["eye_rx"] * far, t["eye_ry"] * p["eye_open"]),
                                angle=-side * t["eye_tilt"])
        canvas.paint(sclera, rgb["sclera"])
        iris_c = eye + p["gaze"]
        for radius, colour in ((t["iris_r"], rgb["iris"]), (0.45 * t["iris_r"], rgb["pupil"])):
            canvas.paint(_clipped(canvas.ellipse(iris_c, _xy(radius, radius)), sclera), colour)
        frame = canvas.ellipse(eye, _xy(t["eye_rx"] * far + 4, t["eye_ry"] + 5), hollow=0.2,
                               opacity=p["glasses"])
        canvas.paint(frame, rgb["frame"])
    bridge_half = _xy(np.maximum(p["eye_half"] - t["eye_rx"] - 4, 0.5) + 1, 0.7)
    canvas.paint(canvas.rectangle(_xy(_EYE_CX + 7 * yaw, p["eye_y"] - 1), bridge_half, p["glasses"]),
                 rgb["frame"])


def _paint_lower_face(canvas: _Canvas, t: Traits, p: Dict[str, np.ndarray],
                      rgb: Dict[str, np.ndarray]) -> None:
    """Nose bridge shadow and nostrils, lips (bent by the smile), open mouth and moles."""
    nose, mouth, bend = p["nose"], p["mouth"], p["mouth_bend"]
    bridge = canvas.ellipse(_xy(nose[:, 0] - 1.5, nose[:, 1] - t["nose_len"] / 2),
                            _xy(2.2, t["nose_len"] / 2), opacity=np.full_like(bend, 0.55))
    canvas.paint(bridge, rgb["skin"] * 0.8)
    for side in (-1, 1):
        nostril = canvas.ellipse(_xy(nose[:, 0] + side * t["nose_half_width"], nose[:, 1] + 1.5),
                                 _xy(t["nostril_r"], 0.6 * t["nostril_r"]))
        canvas.paint(nostril, rgb["skin"] * 0.45)
    lips = canvas.ellipse(mouth, _xy(p["mouth_half"], t["lip_thick"] + 3 * p["mouth_open"]), bend=bend)
    canvas.paint(lips, rgb["lips"])
    inside = canvas.ellipse(mouth, _xy(0.8 * p["mouth_half"], 4.5 * p["mouth_open"]), bend=bend,
                            opacity=np.clip((p["mouth_open"] - 0.05) * 10, 0, 1))
    canvas.paint(inside, rgb["mouth"])
    mole_radii = _xy(np.full_like(bend, 1.4), 1.4)
    for mole in ("mole1", "mole2"):
        spot = canvas.ellipse(_xy(t[mole + "_x"] + 7 * p["yaw"], t[mole + "_y"]), mole_radii, opacity=t[mole])
        canvas.paint(spot, rgb["skin"] * 0.45)


def _occluder(config: SyntheticFaceConfig, t: Traits, p: Dict[str, np.ndarray],
              u: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centre (N, 2), half sides (N, 2), colour (N, 3), present (N,)): patch, sunglasses or mask."""
    present = (u["occluded"] < min(config.occlusion_prob * config.nuisance, 1.0)).astype(np.float64)
    tint = np.stack([u["occ_r"], u["occ_g"], u["occ_b"]], 1)
    patch = (_xy(24 + 64 * u["occ_x"], 36 + 66 * u["occ_y"]),
             _xy(8 + 16 * u["occ_w"], 6 + 16 * u["occ_h"]), 255 * tint)
    sunglasses = (_xy(_EYE_CX + 7 * p["yaw"], p["eye_y"]),
                  _xy(p["eye_half"] + t["eye_rx"] + 4, 5 + 2 * u["occ_h"]), 60 * tint)
    top = p["nose"][:, 1] - 1 + 3 * u["occ_y"]
    mask = (_xy(p["mouth"][:, 0], (top + 122) / 2), _xy(0.9 * t["face_rx"], (122 - top) / 2),
            170 + 80 * tint)
    kind = np.digitize(u["occ_kind"], (0.45, 0.75))[:, None]  # 0 patch, 1 sunglasses, 2 face mask
    centre, half, colour = (np.choose(kind, options) for options in zip(patch, sunglasses, mask))
    return centre, half, colour, present


class SyntheticFaces:
    """Renders the identities of one synthetic population; see the module docstring.

    Args:
        config: difficulty knobs (`SyntheticFaceConfig()` is the 'medium' preset).
        seed: population seed; identity i of one seed is unrelated to identity i of another.
    """

    def __init__(self, config: Optional[SyntheticFaceConfig] = None, seed: int = 0) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"SyntheticFaces seed={seed!r} must be a non-negative integer")
        self.config = config if config is not None else SyntheticFaceConfig()
        self.seed = int(seed)
        self._noise_banks: Dict[int, np.ndarray] = {}

    def identity(self, i: int) -> Dict[str, np.ndarray]:
        """Traits of identity `i`: geometry in canonical px, colours as RGB (3,), mark flags."""
        traits = identity_traits(self.config, self.seed, np.array([i]))
        return {name: value[0] for name, value in traits.items()}

    def render_aligned(self, identity_ids: np.ndarray, image_seeds: np.ndarray) -> np.ndarray:
        """Aligned crops, as detection + 5-point alignment give them: uint8 (N, 112, 112, 3) RGB.

        Image k shows identity `identity_ids[k]` with the nuisances of (identity, `image_seeds[k]`).
        """
        return self._render_all(identity_ids, image_seeds, aligned=True)[0]

    def render_unaligned(self, identity_ids: np.ndarray,
                         image_seeds: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """IJB-style loose crops: uint8 (N, S, S, 3) RGB, float32 (N, 5, 2) landmarks, float32 (N,)
        faceness in (0.5, 1].

        S is `config.unaligned_size`. The landmarks (left eye, right eye, nose tip, left and right
        mouth corner; x, y in pixels) are exactly where the renderer drew those points.
        """
        return self._render_all(identity_ids, image_seeds, aligned=False)

    def _render_all(self, identity_ids: np.ndarray, image_seeds: np.ndarray,
                    aligned: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, landmarks, faceness) for any N, rendered `_CHUNK` images at a time."""
        ids, seeds = np.asarray(identity_ids), np.asarray(image_seeds)
        if ids.ndim != 1 or ids.shape != seeds.shape:
            raise ValueError(f"identity_ids {ids.shape} and image_seeds {seeds.shape} must be 1-D arrays "
                             "of equal length")
        for name, values in (("identity_ids", ids), ("image_seeds", seeds)):
            if values.size and (values.dtype.kind not in "iu" or values.min() < 0):
                raise ValueError(f"{name} must hold non-negative integers, got dtype {values.dtype}"
                                 + (f" and minimum {values.min()}" if values.dtype.kind in "iu" else ""))
        if not len(ids):
            size = ALIGNED_SIZE if aligned else self.config.unaligned_size
            return (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 5, 2), np.float32),
                    np.zeros(0, np.float32))
        chunks = [self._render(ids[i:i + _CHUNK], seeds[i:i + _CHUNK], aligned)
                  for i in range(0, len(ids), _CHUNK)]
        return tuple(np.concatenate(column) for column in zip(*chunks))

    def _pose(self, p: Dict[str, np.ndarray], u: Dict[str, np.ndarray],
              aligned: bool) -> Tuple[np.ndarray, np.ndarray, int]:
        """(m, t, size): the similarity z_out = m z + t from canonical to output pixels, (N,) each."""
        c, k = self.config, self.config.nuisance
        rotation, scale = 2 * u["rot"] - 1, u["scale"]  # in [-1, 1) and [0, 1)
        shift = (2 * u["shift_x"] - 1) + 1j * (2 * u["shift_y"] - 1)
        if aligned:  # least-squares alignment of this face's own landmarks, then detector error
            m, t = _fit_similarity(p["landmarks"], ARCFACE_TEMPLATE)
            j = c.align_jitter * k
            error = np.exp((2 * scale - 1) * 0.05 * j + 1j * np.deg2rad(rotation * 4 * j))
            centre = (ALIGNED_SIZE - 1) / 2 * (1 + 1j)
            return error * m, error * (t - centre) + centre + 2.5 * j * shift, ALIGNED_SIZE
        size, (lo, hi) = c.unaligned_size, c.unaligned_scale
        m = (lo + (hi - lo) * scale) * np.exp(1j * np.deg2rad(rotation * c.unaligned_rotation * k))
        anchor = _FACE_ANCHOR[0] + 1j * _FACE_ANCHOR[1]
        return m, (size - 1) / 2 * (1 + 1j) + 0.08 * size * k * shift - m * anchor, size

    def _noise_bank(self, size: int) -> np.ndarray:
        """A fixed (3, size + 128, size + 128) unit Gaussian field; each image adds a window of it."""
        if size not in self._noise_banks:
            rng = np.random.default_rng([self.seed, _STREAM_NOISE, size])
            self._noise_banks[size] = rng.standard_normal((3, size + 128, size + 128), dtype=np.float32)
        return self._noise_banks[size]

    def _render(self, ids: np.ndarray, seeds: np.ndarray,
                aligned: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chunk: identity -> parts after pose/expression -> paint -> light, blur, noise."""
        c, k = self.config, self.config.nuisance
        t = identity_traits(c, self.seed, ids)
        u = image_nuisances(c, self.seed, ids, seeds)
        p = _face_parts(c, t, u)
        p["glasses"] = t["glasses"] * (u["glasses_off"] >= 0.3 * min(k, 1.0))  # taken off sometimes
        m, shift, size = self._pose(p, u, aligned)
        # Exposure and white balance scale every colour; painting is linear, so this equals
        # scaling the image, at no per-pixel cost.
        light = c.lighting * k
        cast = 2 * np.stack([u["cast_r"], u["cast_g"], u["cast_b"]], 1) - 1  # (N, 3)
        gain = (1 + light * (u["gain"] - 0.6))[:, None] * (1 + 0.3 * light * cast)  # (N, 3)
        background = 128 + (2 * np.stack([u["bg_r"], u["bg_g"], u["bg_b"]], 1) - 1) * 127 * min(k, 1.0)
        canvas = _Canvas(m, shift, size, background * gain)
        fixed = {"sclera": (238, 234, 228), "pupil": (18, 14, 14), "mouth": (70, 25, 30)}
        rgb = {name: np.asarray(t.get(name, fixed.get(name)), np.float64) * gain
               for name in ("skin", "hair", "iris", "lips", "frame", *fixed)}
        for painter in (_paint_head, _paint_eyes, _paint_lower_face):
            painter(canvas, t, p, rgb)
        occ_centre, occ_half, occ_colour, occluded = _occluder(c, t, p, u)
        canvas.paint(canvas.rectangle(occ_centre, occ_half, occluded), occ_colour * gain)
        angle = 2 * np.pi * u["light_angle"]
        canvas.light(light * u["light"] * np.cos(angle), light * u["light"] * np.sin(angle))
        blur = np.clip(2 * u["blur"] - 1, 0, 1) ** 1.5 * c.blur_max * k  # half the images are sharp
        canvas.blur(blur)
        sigma = u["noise"] * c.noise_max * k
        offsets = np.minimum(np.stack([u["noise_y"], u["noise_x"]], 1) * 129, 128).astype(np.intp)
        canvas.add_noise(self._noise_bank(size), offsets, np.where(u["noise_sign"] < 0.5, -sigma, sigma))
        z = m[:, None] * (p["landmarks"][..., 0] + 1j * p["landmarks"][..., 1]) + shift[:, None]  # (N, 5)
        landmarks = np.stack([z.real, z.imag], -1).astype(np.float32)  # (N, 5, 2)
        covered = occluded * np.minimum(4 * occ_half.prod(1) / (np.pi * t["face_rx"] * t["face_ry"]), 1)
        faceness = (1 - 0.15 * np.abs(p["yaw"]) - 0.1 * np.abs(p["pitch"]) - 0.05 * blur - 0.004 * sigma
                    - 0.35 * covered)
        return canvas.to_uint8(), landmarks, np.clip(faceness, 0.51, 1.0).astype(np.float32)
