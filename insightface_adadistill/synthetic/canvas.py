"""A batch rasteriser for soft-edged ellipses and rectangles posed by a similarity transform.

Parts are given in the canonical frame (the 112x112 ArcFace crop coordinates) and painted back to
front into a planar float32 canvas (N, 3, H, W), each only inside the pixel box it can reach in this
batch; pixels see only +, -, *, / and clip. numpy only: no assets, no OpenCV.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Tuple, Union

import numpy as np

# (images, rows, cols, alpha): images slice(None) (all) or the (n,) indices of the images the part appears
# in (a beard, glasses: rare parts cost only where drawn), alpha float32 (n, h, w); None: touches no pixel.
Mask = Optional[Tuple[Union[slice, np.ndarray], slice, slice, np.ndarray]]


def xy(x: Union[float, np.ndarray], y: Union[float, np.ndarray]) -> np.ndarray:
    """Stack per-image x and y (scalars or (N,)) into (N, 2) points."""
    return np.stack(np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64)), 1)


def _own(pick: Union[slice, np.ndarray], x: np.ndarray) -> np.ndarray:
    """A part's per-image parameter `x` (N,) for the images it is drawn in, as float32 (n, 1, 1)."""
    return x[pick].astype(np.float32)[:, None, None]


class Canvas:
    """A batch of planar float32 images (N, 3, H, W) plus the canonical (u, v) of every pixel.

    The pose is the similarity z_out = m * z_canonical + t (complex, (N,)); parts are given in the
    canonical frame and rasterised in output pixels, whose centres sit at integer coordinates.
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
        images = slice(None) if active.all() else np.flatnonzero(active)
        c = self.m * (centre[:, 0] + 1j * centre[:, 1]) + self.t
        lo, hi = (c - half[:, 0] - 1j * half[:, 1])[active], (c + half[:, 0] + 1j * half[:, 1])[active]
        r0 = max(int(np.floor(lo.imag.min())) - 1, 0)
        r1 = min(int(np.ceil(hi.imag.max())) + 2, self.size)
        c0 = max(int(np.floor(lo.real.min())) - 1, 0)
        c1 = min(int(np.ceil(hi.real.max())) + 2, self.size)
        return (images, slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None

    def _local(self, where, centre: np.ndarray, angle: Optional[np.ndarray]):
        """Scratch planes (a, b, s1, s2): a, b are the pixels' canonical offsets from `centre`
        (N, 2), rotated by `angle` (N,) degrees into the part's frame; s1, s2 are free."""
        pick = where[0]
        u, v = self.u[where], self.v[where]
        a, b, s1, s2 = self._planes(u.shape)
        np.subtract(u, _own(pick, centre[:, 0]), out=a)
        np.subtract(v, _own(pick, centre[:, 1]), out=b)
        if angle is not None:
            cos, sin = (f(np.deg2rad(angle[pick])).astype(np.float32)[:, None, None] for f in (np.cos, np.sin))
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
                opacity: Optional[np.ndarray] = None) -> Mask:
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
        own = partial(_own, where[0])
        a, b, s1, _ = self._local(where, centre, angle)
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
            np.subtract(own(cut_y), self.v[where], out=s1)
            s1 *= own(self.scale)
            alpha *= np.clip(s1, 0, 1, out=s1)
        if opacity is not None:
            alpha *= own(opacity)
        return (*where, alpha)

    def rectangle(self, centre: np.ndarray, half: np.ndarray, opacity: np.ndarray) -> Mask:
        """Soft mask of a canonical-frame rectangle with half sides `half` (N, 2); like `ellipse`."""
        theta = np.angle(self.m)
        c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
        reach = self.scale[:, None] * xy(half[:, 0] * c + half[:, 1] * s, half[:, 0] * s + half[:, 1] * c)
        where = self._select(opacity > 0, reach, centre)
        if where is None:
            return None
        pick = where[0]
        du, dv, _, _ = self._local(where, centre, None)
        for d, h in ((du, half[:, 0]), (dv, half[:, 1])):  # (half - |d|) * px, clipped to [0, 1]
            np.abs(d, out=d)
            np.subtract(_own(pick, h), d, out=d)
            d *= _own(pick, self.scale)
            np.clip(d, 0, 1, out=d)
        return (*where, du * dv * _own(pick, opacity))

    def fill(self, colour: np.ndarray, centre: np.ndarray, radii: np.ndarray, **shape) -> Mask:
        """Paint `colour` (N, 3) through `ellipse(centre, radii, **shape)`; returns that mask."""
        mask = self.ellipse(centre, radii, **shape)
        self.paint(mask, colour)
        return mask

    def paint(self, mask: Mask, colour: np.ndarray) -> None:
        """Blend `colour` (N, 3) over the canvas through `mask` (from `ellipse`/`rectangle`)."""
        if mask is None:
            return
        images, rows, cols, alpha = mask
        region = self.image[images, :, rows, cols]  # (n, 3, h, w): a view for slice(None), else a copy
        delta = self._delta[:region.size].reshape(region.shape)
        np.subtract(colour[images].astype(np.float32)[:, :, None, None], region, out=delta)
        delta *= alpha[:, None]
        region += delta
        if not isinstance(images, slice):  # write the copy back
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


def clipped(mask: Mask, clip: Mask) -> Mask:
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
    other = clip_alpha[images, rows_in_clip, cols_in_clip]
    return images, slice(r0, r1), slice(c0, c1), own * other
