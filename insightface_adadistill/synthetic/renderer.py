"""Procedural face renderer: identities and nuisances (`identities`) painted on a `Canvas`.

Yaw and pitch move the interior features against the outline, expression bends the mouth and closes
the eyes, and the pose is either the least-squares alignment of the face's own 5 landmarks to the
ArcFace template plus detector jitter (aligned 112x112 crops, as MS1M) or a loose IJB-style crop with
the landmarks where they were drawn. ~2000+ aligned faces/s on one core; see docs/synthetic.md.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from insightface_adadistill.evaluation.alignment import ALIGNED_SIZE, ARCFACE_TEMPLATE_64
from insightface_adadistill.synthetic.canvas import Canvas, clipped, xy
from insightface_adadistill.synthetic.identities import (NOISE_STREAM, Arrays, SyntheticFaceConfig,
                                                         identity_traits, image_nuisances)

_EYE_CX = float(ARCFACE_TEMPLATE_64[:2, 0].mean())
_NOSE_X = float(ARCFACE_TEMPLATE_64[2, 0])
_MOUTH_CX = float(ARCFACE_TEMPLATE_64[3:, 0].mean())
_FACE_ANCHOR = np.array([56.0, 68.0])  # canonical point placed at the canvas centre when unaligned
_CHUNK = 64  # images per vectorised pass: bounds the union of part boxes and the memory


def _face_parts(config: SyntheticFaceConfig, t: Arrays, u: Arrays) -> Arrays:
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
         "gaze": xy((2 * u["gaze_x"] - 1) * 1.2 * expr, (2 * u["gaze_y"] - 1) * 0.6 * expr),
         "eye_half": t["eye_half_gap"] * narrow, "eye_y": vertical(t["eye_y"]),
         "nose": xy(_NOSE_X + 9 * yaw, vertical(t["nose_y"])),
         "mouth": xy(_MOUTH_CX + 7 * yaw, vertical(t["mouth_y"])),
         "mouth_half": t["mouth_half"] * narrow + 1.5 * smile, "mouth_bend": 0.012 * smile}
    p["eye_l"] = xy(_EYE_CX + 7 * yaw - p["eye_half"], p["eye_y"])
    p["eye_r"] = xy(_EYE_CX + 7 * yaw + p["eye_half"], p["eye_y"])
    corner_dy = -p["mouth_bend"] * p["mouth_half"] ** 2  # a smile lifts the corners
    corners = [xy(p["mouth"][:, 0] + sign * p["mouth_half"], p["mouth"][:, 1] + corner_dy)
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


# ------------------------------------------------------------------------------------- rendering
def _paint_head(canvas: Canvas, t: Arrays, p: Arrays, rgb: Arrays) -> None:
    """Back hair, neck, ears, face outline (tapered to the chin), beard and fringe, back to front."""
    yaw, pitch = p["yaw"], p["pitch"]
    face_c = xy(56 + 2 * yaw, t["face_cy"] + 1.5 * pitch)
    face_rx = t["face_rx"] * (1 - 0.05 * yaw ** 2)
    canvas.fill(rgb["hair"], xy(56 - 2 * yaw, t["face_cy"] - 6),  # back hair
                xy(face_rx * t["hair_volume"] + 3, t["face_ry"] + 4), cut_y=t["hair_len"])
    canvas.fill(rgb["skin"] * 0.82, xy(56 + yaw, face_c[:, 1] + 0.85 * t["face_ry"]),  # neck
                xy(0.5 * face_rx, 0.5 * t["face_ry"]))
    for side in (-1, 1):  # the ear on the side the face turns away from hides behind it
        canvas.fill(rgb["skin"] * 0.9, xy(face_c[:, 0] + side * (face_rx - 1), t["ear_y"] + 2 * pitch),
                    xy(0.5 * t["ear_size"], t["ear_size"]), opacity=np.clip(1 - 2 * side * yaw, 0, 1))
    face = canvas.fill(rgb["skin"], face_c, xy(face_rx, t["face_ry"]), taper=t["chin_taper"])
    beard = canvas.ellipse(xy(p["mouth"][:, 0], p["mouth"][:, 1] + 8),
                           xy(0.78 * face_rx, 0.42 * t["face_ry"]), opacity=t["beard"])
    canvas.paint(clipped(beard, face), rgb["hair"] * 0.8)
    canvas.fill(rgb["hair"], xy(56 + t["hair_part"] + 3 * yaw, t["hairline_y"] - 24 + 3 * pitch),  # fringe
                xy(1.04 * face_rx, np.full_like(yaw, 24)), angle=t["hair_tilt"])


def _paint_eyes(canvas: Canvas, t: Arrays, p: Arrays, rgb: Arrays) -> None:
    """Brows, eyes (sclera, iris and pupil clipped to the eyelids) and glasses frames."""
    yaw = p["yaw"]
    for side, eye in ((-1, p["eye_l"]), (1, p["eye_r"])):
        far = 1 - 0.3 * np.maximum(side * yaw, 0)  # foreshortening of the eye turning away
        canvas.fill(rgb["hair"] * 0.75, xy(eye[:, 0], eye[:, 1] - t["brow_gap"] - p["brow_raise"]),  # brow
                    xy(t["brow_len"] * far, t["brow_thick"]), angle=-side * t["brow_tilt"])
        sclera = canvas.fill(rgb["sclera"], eye, xy(t["eye_rx"] * far, t["eye_ry"] * p["eye_open"]),
                             angle=-side * t["eye_tilt"])
        iris_c = eye + p["gaze"]
        for radius, colour in ((t["iris_r"], rgb["iris"]), (0.45 * t["iris_r"], rgb["pupil"])):
            canvas.paint(clipped(canvas.ellipse(iris_c, xy(radius, radius)), sclera), colour)
        canvas.fill(rgb["frame"], eye, xy(t["eye_rx"] * far + 4, t["eye_ry"] + 5), hollow=0.2,  # glasses
                    opacity=p["glasses"])
    bridge_half = xy(np.maximum(p["eye_half"] - t["eye_rx"] - 4, 0.5) + 1, 0.7)
    canvas.paint(canvas.rectangle(xy(_EYE_CX + 7 * yaw, p["eye_y"] - 1), bridge_half, p["glasses"]),
                 rgb["frame"])


def _paint_lower_face(canvas: Canvas, t: Arrays, p: Arrays, rgb: Arrays) -> None:
    """Nose bridge shadow and nostrils, lips (bent by the smile), open mouth and moles."""
    nose, mouth, bend = p["nose"], p["mouth"], p["mouth_bend"]
    canvas.fill(rgb["skin"] * 0.8, xy(nose[:, 0] - 1.5, nose[:, 1] - t["nose_len"] / 2),  # bridge shadow
                xy(2.2, t["nose_len"] / 2), opacity=np.full_like(bend, 0.55))
    for side in (-1, 1):  # nostrils
        canvas.fill(rgb["skin"] * 0.45, xy(nose[:, 0] + side * t["nose_half_width"], nose[:, 1] + 1.5),
                    xy(t["nostril_r"], 0.6 * t["nostril_r"]))
    canvas.fill(rgb["lips"], mouth, xy(p["mouth_half"], t["lip_thick"] + 3 * p["mouth_open"]), bend=bend)
    canvas.fill(rgb["mouth"], mouth, xy(0.8 * p["mouth_half"], 4.5 * p["mouth_open"]), bend=bend,  # open mouth
                opacity=np.clip((p["mouth_open"] - 0.05) * 10, 0, 1))
    mole_radii = xy(np.full_like(bend, 1.4), 1.4)
    for mole in ("mole1", "mole2"):
        canvas.fill(rgb["skin"] * 0.45, xy(t[mole + "_x"] + 7 * p["yaw"], t[mole + "_y"]), mole_radii,
                    opacity=t[mole])


def _occluder(config: SyntheticFaceConfig, t: Arrays, p: Arrays,
              u: Arrays) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centre (N, 2), half sides (N, 2), colour (N, 3), present (N,)): patch, sunglasses or mask."""
    present = (u["occluded"] < min(config.occlusion_prob * config.nuisance, 1.0)).astype(np.float64)
    tint = np.stack([u["occ_r"], u["occ_g"], u["occ_b"]], 1)
    patch = (xy(24 + 64 * u["occ_x"], 36 + 66 * u["occ_y"]),
             xy(8 + 16 * u["occ_w"], 6 + 16 * u["occ_h"]), 255 * tint)
    sunglasses = (xy(_EYE_CX + 7 * p["yaw"], p["eye_y"]),
                  xy(p["eye_half"] + t["eye_rx"] + 4, 5 + 2 * u["occ_h"]), 60 * tint)
    top = p["nose"][:, 1] - 1 + 3 * u["occ_y"]
    mask = (xy(p["mouth"][:, 0], (top + 122) / 2), xy(0.9 * t["face_rx"], (122 - top) / 2),
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

    def _pose(self, p: Arrays, u: Arrays, aligned: bool) -> Tuple[np.ndarray, np.ndarray, int]:
        """(m, t, size): the similarity z_out = m z + t from canonical to output pixels, (N,) each."""
        c, k = self.config, self.config.nuisance
        rotation, scale = 2 * u["rot"] - 1, u["scale"]  # in [-1, 1) and [0, 1)
        shift = (2 * u["shift_x"] - 1) + 1j * (2 * u["shift_y"] - 1)
        if aligned:  # least-squares alignment of this face's own landmarks, then detector error
            m, t = _fit_similarity(p["landmarks"], ARCFACE_TEMPLATE_64)
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
            rng = np.random.default_rng([self.seed, NOISE_STREAM, size])
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
        canvas = Canvas(m, shift, size, background * gain)
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
