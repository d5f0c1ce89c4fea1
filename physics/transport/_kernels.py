"""Numba kernels of the photon-transport engine (private; callers validate).

Everything here takes only arrays and scalars. Units: lengths in cm in the *grid frame*
(x along array axis 2, y along axis 1, z along axis 0; the grid box is
``[0, nx·dx] × [0, ny·dy] × [0, nz·dz]``), energies in keV.

* Random numbers: splitmix64 (Steele, Lea & Flood, OOPSLA 2014) as a counter-based
  stream; history ``h`` of batch ``b`` starts from ``mix(mix(mix(seed)+b)+h)``, so a
  result does not depend on how histories are split over threads.
* Tracking: Woodcock (delta) tracking (Woodcock et al., ANL-7050, 1965) with a
  piecewise-constant majorant over blocks of voxels (a macro grid, as in the majorant
  grids of volume rendering: Szirmay-Kalos et al., Comput. Graph. Forum 30 (2011) 85):
  block b's majorant is ``s_b (μ/ρ)_{r_b}(E)`` with ``r_b`` a material row of the block and
  ``s_b`` the smallest factor that bounds ``ρ μ/ρ`` of every voxel of the block at every
  energy. A flight that reaches the block's boundary without colliding stops there and a
  new one starts with the next block's majorant (the exponential has no memory), so the
  tracking stays exact while air and soft tissue no longer pay for the densest bone.
* Compton: Klein–Nishina by Kahn's rejection method (Kahn, RAND AECU-3259, 1956; as in
  OpenMC ``klein_nishina``), then rejection on ``S(x)/Z`` (bound electrons, no Doppler).
* Rayleigh: inverse CDF of ``F²(x)`` in ``x²``, rejection on ``(1 + cos²θ)/2``.
* K fluorescence (optional): isotropic line photons after photoabsorption.
* Electrons and photons below the cutoff deposit their energy where they are created
  (kerma approximation).

Tallies: per-thread rows (padded to 64-byte multiples, so threads never share a cache
line), float64, summed after the ``prange`` loop.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

#: Flags shared by every kernel.
NJIT_FLAGS = {"cache": True, "fastmath": False, "nogil": True}

#: Escape categories: faces -x, +x, -y, +y, -z, +z of the grid box, then "missed the grid".
N_ESCAPE_CATEGORIES = 7
#: Quantities per escape category: energy (keV), count, uncollided energy, uncollided count.
N_ESCAPE_QUANTITIES = 4
_ESC_ROW = 32 + 8  # 28 escape entries, [28] world deposit; padded

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0
_TWO_PI = 2.0 * math.pi


@njit(**NJIT_FLAGS)
def mix64(z):
    """splitmix64 finaliser of a uint64."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(**NJIT_FLAGS)
def stream_start(seed, batch, history):
    """Initial state of the random stream of one history."""
    s = mix64(np.uint64(seed) + _GOLDEN)
    s = mix64(s + np.uint64(batch))
    return mix64(s + np.uint64(history))


@njit(**NJIT_FLAGS)
def next_uniform(state):
    """Advance the stream; returns ``(state, u)`` with ``u`` uniform in [0, 1)."""
    state = state + _GOLDEN
    z = mix64(state)
    return state, float(z >> _S11) * _INV53


@njit(**NJIT_FLAGS)
def sample_klein_nishina(state, e_keV, sz_row, hx_inv, nx_tab):
    """Sample a Compton scattering (Kahn's method, rejection on S/Z).

    Returns ``(state, cos_theta, e_scattered_keV)``.
    """
    alpha = e_keV / 510.99895
    beta = 1.0 + 2.0 * alpha
    t = beta / (beta + 8.0)
    k = e_keV / 12.3984193
    while True:
        state, r1 = next_uniform(state)
        state, r2 = next_uniform(state)
        state, r3 = next_uniform(state)
        if r1 < t:
            ratio = 1.0 + 2.0 * alpha * r2
            if r3 > 4.0 * (1.0 / ratio - 1.0 / (ratio * ratio)):
                continue
        else:
            ratio = beta / (1.0 + 2.0 * alpha * r2)
            mu = 1.0 + (1.0 - ratio) / alpha
            if r3 > 0.5 * (mu * mu + 1.0 / ratio):
                continue
        mu = 1.0 + (1.0 - ratio) / alpha
        if mu > 1.0:
            mu = 1.0
        elif mu < -1.0:
            mu = -1.0
        # incoherent scattering function S(x)/Z, x = sin(θ/2)/λ, uniform grid
        xq = k * math.sqrt(0.5 * (1.0 - mu)) * hx_inv
        j = int(xq)
        if j >= nx_tab - 1:
            s = sz_row[nx_tab - 1]
        else:
            f = xq - j
            s = sz_row[j] + f * (sz_row[j + 1] - sz_row[j])
        state, r4 = next_uniform(state)
        if r4 < s:
            return state, mu, e_keV / ratio


@njit(**NJIT_FLAGS)
def sample_rayleigh(state, e_keV, cum_row, hx, nx_tab):
    """Sample a Rayleigh scattering angle: x² from ∫F² d(x²), accept on (1+cos²θ)/2.

    Returns ``(state, cos_theta)``.
    """
    xmax = e_keV / 12.3984193
    x2max = xmax * xmax
    q = xmax / hx
    jm = int(q)
    if jm >= nx_tab - 1:
        jm = nx_tab - 2
    fq = q - jm
    x2a = (jm * hx) ** 2
    x2b = ((jm + 1) * hx) ** 2
    gmax = cum_row[jm] + (x2max - x2a) / (x2b - x2a) * (cum_row[jm + 1] - cum_row[jm])
    if fq < 0.0:
        gmax = cum_row[jm]
    while True:
        state, r = next_uniform(state)
        g = r * gmax
        lo = 0
        hi = jm + 1
        while hi - lo > 1:  # cum_row[lo] <= g < cum_row[hi]
            mid = (lo + hi) >> 1
            if cum_row[mid] <= g:
                lo = mid
            else:
                hi = mid
        ga = cum_row[lo]
        gb = cum_row[lo + 1]
        xa2 = (lo * hx) ** 2
        xb2 = ((lo + 1) * hx) ** 2
        if gb > ga:
            x2 = xa2 + (g - ga) / (gb - ga) * (xb2 - xa2)
        else:
            x2 = xa2
        mu = 1.0 - 2.0 * x2 / x2max
        if mu < -1.0:
            mu = -1.0
        state, r2 = next_uniform(state)
        if 2.0 * r2 < 1.0 + mu * mu:
            return state, mu


@njit(**NJIT_FLAGS)
def rotate(u, v, w, mu, phi):
    """Direction after scattering by polar cosine ``mu`` and azimuth ``phi``."""
    st = math.sqrt(max(0.0, 1.0 - mu * mu))
    cp = math.cos(phi)
    sp = math.sin(phi)
    if abs(w) > 0.99999:
        sgn = 1.0 if w > 0 else -1.0
        return st * cp, st * sp, mu * sgn
    tmp = math.sqrt(1.0 - w * w)
    un = u * mu + st * (u * w * cp - v * sp) / tmp
    vn = v * mu + st * (v * w * cp + u * sp) / tmp
    wn = w * mu - st * tmp * cp
    nrm = 1.0 / math.sqrt(un * un + vn * vn + wn * wn)
    return un * nrm, vn * nrm, wn * nrm


@njit(**NJIT_FLAGS)
def _exit_face(x, y, z, u, v, w, lx, ly, lz):
    """Face (0..5 = -x,+x,-y,+y,-z,+z) and distance through which a ray leaves the grid box."""
    best = 1e300
    face = 0
    if u > 0.0:
        t = (lx - x) / u
        if t < best:
            best = t; face = 1
    elif u < 0.0:
        t = -x / u
        if t < best:
            best = t; face = 0
    if v > 0.0:
        t = (ly - y) / v
        if t < best:
            best = t; face = 3
    elif v < 0.0:
        t = -y / v
        if t < best:
            best = t; face = 2
    if w > 0.0:
        t = (lz - z) / w
        if t < best:
            best = t; face = 5
    elif w < 0.0:
        t = -z / w
        if t < best:
            best = t; face = 4
    return face, max(best, 0.0)


@njit(**NJIT_FLAGS)
def _box_entry(x, y, z, u, v, w, x0, y0, z0, x1, y1, z1):
    """Distance along the ray to enter the box ``[x0,x1]×[y0,y1]×[z0,z1]`` (0 if inside),
    or -1 if the ray misses it."""
    t0 = -1e300
    t1 = 1e300
    p = (x, y, z)
    d = (u, v, w)
    lo = (x0, y0, z0)
    hi = (x1, y1, z1)
    for a in range(3):
        if d[a] != 0.0:
            ta = (lo[a] - p[a]) / d[a]
            tb = (hi[a] - p[a]) / d[a]
            if ta > tb:
                ta, tb = tb, ta
            t0 = max(t0, ta)
            t1 = min(t1, tb)
        elif p[a] < lo[a] or p[a] > hi[a]:
            return -1.0
    if t1 <= max(t0, 0.0):
        return -1.0
    return max(t0, 0.0)


@njit(**NJIT_FLAGS)
def _entry_distance(x, y, z, u, v, w, lx, ly, lz):
    """Distance to enter the grid box ``[0,lx]×[0,ly]×[0,lz]`` (0 if inside), or -1 if missed."""
    return _box_entry(x, y, z, u, v, w, 0.0, 0.0, 0.0, lx, ly, lz)


@njit(**NJIT_FLAGS)
def _box_exit(x, y, z, u, v, w, x0, y0, z0, x1, y1, z1):
    """Distance along the ray from a point inside the box to its boundary."""
    best = 1e300
    if u > 0.0:
        best = min(best, (x1 - x) / u)
    elif u < 0.0:
        best = min(best, (x0 - x) / u)
    if v > 0.0:
        best = min(best, (y1 - y) / v)
    elif v < 0.0:
        best = min(best, (y0 - y) / v)
    if w > 0.0:
        best = min(best, (z1 - z) / w)
    elif w < 0.0:
        best = min(best, (z0 - z) / w)
    return max(best, 0.0)


@njit(**NJIT_FLAGS)
def _interact(st, e, u, v, w, m, ie, fe, mu_rho_t, mu_tab, sz_tab, ray_cum, hx, hx_inv, nx_tab,
              cutoff_keV, fl_cum, fl_e):
    """One real collision in material row ``m``.

    Photoabsorption may emit a K-fluorescence photon (``fl_cum[m, ie, l]``: cumulative
    probability of lines ``0..l``; ``fl_e[m, l]``: their energies), emitted isotropically.

    Returns ``(state, e_new, deposited_keV, u, v, w, alive)``.
    """
    st, r = next_uniform(st)
    r *= mu_rho_t
    a1 = mu_tab[m, ie, 1]
    pe = a1 + fe * (mu_tab[m, ie + 1, 1] - a1)
    if r < pe:
        n_l = fl_cum.shape[2]
        top = fl_cum[m, ie, n_l - 1] + fe * (fl_cum[m, ie + 1, n_l - 1] - fl_cum[m, ie, n_l - 1])
        if top > 0.0:
            st, r2 = next_uniform(st)
            if r2 < top:
                for l in range(n_l):
                    c = fl_cum[m, ie, l] + fe * (fl_cum[m, ie + 1, l] - fl_cum[m, ie, l])
                    if r2 < c:
                        break
                e_fl = fl_e[m, l]
                if e_fl >= cutoff_keV and e_fl < e:
                    st, r3 = next_uniform(st)
                    st, r4 = next_uniform(st)
                    w = 2.0 * r3 - 1.0
                    sn = math.sqrt(max(0.0, 1.0 - w * w))
                    ph = _TWO_PI * r4
                    return st, e_fl, e - e_fl, sn * math.cos(ph), sn * math.sin(ph), w, True
        return st, 0.0, e, u, v, w, False
    a2 = mu_tab[m, ie, 2]
    co = a2 + fe * (mu_tab[m, ie + 1, 2] - a2)
    dep = 0.0
    if r < pe + co:
        st, mu, e_new = sample_klein_nishina(st, e, sz_tab[m], hx_inv, nx_tab)
        dep = e - e_new
        if e_new < cutoff_keV:
            return st, 0.0, e, u, v, w, False
        e = e_new
    else:
        st, mu = sample_rayleigh(st, e, ray_cum[m], hx, nx_tab)
    st, r = next_uniform(st)
    u, v, w = rotate(u, v, w, mu, _TWO_PI * r)
    return st, e, dep, u, v, w, True


@njit(parallel=True, **NJIT_FLAGS)
def transport(pos_cm, dir_, energy_keV, weight, mat, dens, nx, ny, nz, dx, dy, dz,
              mu_tab, blk_ref, blk_scale, bnx, bny, bnz, bsx, bsy, bsz, kx, ky, kz, ln_e0, inv_dln_e, sz_tab, ray_cum, hx,
              cutoff_keV, seed, batch, history_offset, n_threads,
              world_row, world_rho, world_margin_cm, fl_cum, fl_e, conv_tab, score_idx, n_scores, score_mode,
              row_rho, use_row_rho):
    """Transport photons through a voxel grid by Woodcock tracking.

    Parameters
    ----------
    pos_cm, dir_ : float64 (n, 3)
        Start positions (grid frame, cm) and unit directions.
    energy_keV : float64 (n,)
    weight : float64 (n,)
        Statistical weight of each photon (multiplies every tally it contributes to).
    mat : int (nz*ny*nx,)
        Material row per voxel (C order of the [z, y, x] array).
    dens : float32 (nz*ny*nx,)
        Mass density per voxel, g/cm³.
    nx, ny, nz : int; dx, dy, dz : float
        Grid size and voxel size (cm).
    mu_tab : float64 (n_mat, n_E, 4)
        μ/ρ (cm²/g): total, photoelectric, Compton, Rayleigh on a uniform ln E grid.
    blk_ref, blk_scale : int32, float64 (bnz*bny*bnx,)
        Majorant of each block of the macro grid: ``blk_scale[b] * mu_tab[blk_ref[b], :, 0]``
        (1/cm) bounds ρ μ/ρ of every voxel in block b.
    bnx, bny, bnz : int; bsx, bsy, bsz : float; kx, ky, kz : int
        Macro grid size, block size (cm) and block size in voxels; blocks tile the grid from
        its origin, the last ones clipped to it.
    ln_e0, inv_dln_e : float
        ln E of the first node and 1/step.
    sz_tab, ray_cum : float64 (n_mat, n_x)
        S/Z and ∫F² d(x²) on the uniform x grid of step ``hx`` (1/Å).
    cutoff_keV : float
    seed, batch, history_offset : int
        Random stream of history h is ``(seed, batch, history_offset + h)``.
    n_threads : int
        ``numba.get_num_threads()`` of the caller (calling it here would stop caching).
    world_row : int
        Material row of the world (the medium outside the grid), or -1 for vacuum.
    world_rho : float
        World density (g/cm³).
    world_margin_cm : float
        The world is the grid box grown by this margin on every side; beyond it is vacuum.
    fl_cum, fl_e : float64 (n_mat, n_E, L), (n_mat, L)
        K-fluorescence tables (:func:`.xsection.fluorescence_tables`); zeros switch it off.
    conv_tab : float64 (n_mat, n_E) or (0, n_E)
        Dose-to-medium factors: each collision deposit in a voxel of material row m is also
        tallied per row, weighted by ``conv_tab[m]`` at the photon's energy before the
        collision (μen of another medium over μen of row m: the kerma approximation of that
        medium's dose at the same fluence). No rows: no such tally.
    score_idx, n_scores, score_mode : int32 array, int, int
        ``score_mode`` 0: deposits tallied per voxel. 1: per score (e.g. label), ``n_scores`` of
        them, ``score_idx`` giving each voxel's; 2: the same with ``score_idx`` indexed by
        material row (labels that follow the materials: no per-voxel lookup). Scores need far
        less memory and reduction than a voxel map.
    row_rho, use_row_rho : float64 (n_mat,), bool
        With ``use_row_rho`` every voxel of a row has the row's density (no density map is
        read: one memory access less per tentative collision on large grids).

    Returns
    -------
    edep_keV : float64 (nz*ny*nx,) or (n_scores,)
        Weighted energy deposited per voxel (or per score).
    escape : float64 (7, 4)
        Per category (the grid face -x,+x,-y,+y,-z,+z through which the photon last left
        the grid, or "never entered the grid"): weighted energy (keV), count, uncollided
        energy, uncollided count. With a world, a photon escapes when it leaves the world.
    world_keV : float
        Weighted energy deposited in the world medium.
    conv_keV : float64 (n_mat,) or (0,)
        Weighted, converted deposits per material row (``conv_tab``).
    """
    n = energy_keV.shape[0]
    nvox = nx * ny * nz
    per_voxel = score_mode == 0
    width = nvox if per_voxel else n_scores
    stride = ((width + 7) // 8) * 8 + 8
    local = np.zeros((n_threads, stride))
    esc = np.zeros((n_threads, _ESC_ROW))
    n_conv = conv_tab.shape[0]
    cloc = np.zeros((n_threads, n_conv + 1))
    lx = nx * dx
    ly = ny * dy
    lz = nz * dz
    idx = 1.0 / dx
    idy = 1.0 / dy
    idz = 1.0 / dz
    n_e = mu_tab.shape[1]
    ibx = 1.0 / bsx
    iby = 1.0 / bsy
    ibz = 1.0 / bsz
    nx_tab = sz_tab.shape[1]
    hx_inv = 1.0 / hx
    has_world = world_row >= 0
    wx0 = -world_margin_cm
    wy0 = -world_margin_cm
    wz0 = -world_margin_cm
    wx1 = lx + world_margin_cm
    wy1 = ly + world_margin_cm
    wz1 = lz + world_margin_cm
    for h in prange(n):
        tid = numba.get_thread_id()
        st = stream_start(seed, batch, history_offset + h)
        x = pos_cm[h, 0]
        y = pos_cm[h, 1]
        z = pos_cm[h, 2]
        u = dir_[h, 0]
        v = dir_[h, 1]
        w = dir_[h, 2]
        e = energy_keV[h]
        wt = weight[h]
        collided = False
        last_face = 6
        in_grid = False
        can_enter = True
        te = (math.log(e) - ln_e0) * inv_dln_e
        ie = min(max(int(te), 0), n_e - 2)
        fe = te - ie
        use_world = has_world
        if has_world:
            t_w = _box_entry(x, y, z, u, v, w, wx0, wy0, wz0, wx1, wy1, wz1)
            if t_w < 0.0:
                use_world = False  # misses the world, hence the grid inside it
                can_enter = False
            else:
                x += t_w * u
                y += t_w * v
                z += t_w * w
        while True:
            if not in_grid:
                t_in = -1.0
                if can_enter:
                    t_in = _entry_distance(x, y, z, u, v, w, lx, ly, lz)
                if not use_world:
                    enter = t_in >= 0.0
                    leave = not enter
                else:  # world medium: sample a flight, compare with the grid entry and world exit
                    a0 = mu_tab[world_row, ie, 0]
                    mu_w_rho = a0 + fe * (mu_tab[world_row, ie + 1, 0] - a0)
                    st, r = next_uniform(st)
                    s = -math.log(1.0 - r) / (world_rho * mu_w_rho)
                    enter = t_in >= 0.0 and s >= t_in
                    leave = not enter and s >= _box_exit(x, y, z, u, v, w, wx0, wy0, wz0, wx1, wy1, wz1)
                if enter:
                    x = min(max(x + t_in * u, 0.0), lx)
                    y = min(max(y + t_in * v, 0.0), ly)
                    z = min(max(z + t_in * w, 0.0), lz)
                    in_grid = True
                    continue
                if leave:
                    c = 4 * last_face
                    esc[tid, c] += wt * e
                    esc[tid, c + 1] += wt
                    if not collided:
                        esc[tid, c + 2] += wt * e
                        esc[tid, c + 3] += wt
                    break
                x += s * u
                y += s * v
                z += s * w
                collided = True
                can_enter = True
                st, e, dep, u, v, w, alive = _interact(
                    st, e, u, v, w, world_row, ie, fe, mu_w_rho, mu_tab, sz_tab, ray_cum, hx,
                    hx_inv, nx_tab, cutoff_keV, fl_cum, fl_e)
                esc[tid, 28] += wt * dep
                if not alive:
                    break
                te = (math.log(e) - ln_e0) * inv_dln_e
                ie = min(max(int(te), 0), n_e - 2)
                fe = te - ie
                continue
            # inside the grid: one flight through the macro grid, block by block (3-D DDA,
            # Amanatides & Woo 1987), Woodcock tracking against each block's majorant
            bi = min(int(x * ibx), bnx - 1)
            bj = min(int(y * iby), bny - 1)
            bk = min(int(z * ibz), bnz - 1)
            tx = 1e300
            ty = 1e300
            tz = 1e300
            if u > 0.0:
                tx = (min((bi + 1) * bsx, lx) - x) / u
            elif u < 0.0:
                tx = (bi * bsx - x) / u
            if v > 0.0:
                ty = (min((bj + 1) * bsy, ly) - y) / v
            elif v < 0.0:
                ty = (bj * bsy - y) / v
            if w > 0.0:
                tz = (min((bk + 1) * bsz, lz) - z) / w
            elif w < 0.0:
                tz = (bk * bsz - z) / w
            t = 0.0
            st, r = next_uniform(st)
            tau = -math.log(1.0 - r)  # optical depth (in majorant units) to the next tentative collision
            real = False
            face = -1
            m = 0
            vox = 0
            mu_rho_t = 0.0
            b = (bk * bny + bj) * bnx + bi
            rb = blk_ref[b]
            a0 = mu_tab[rb, ie, 0]
            mu_b = blk_scale[b] * (a0 + fe * (mu_tab[rb, ie + 1, 0] - a0))
            while True:
                tn = min(tx, min(ty, tz))
                seg = max(tn - t, 0.0)
                if mu_b * seg > tau:  # a tentative collision inside this block
                    t += tau / mu_b
                    ix = min(max(int((x + t * u) * idx), bi * kx), min((bi + 1) * kx, nx) - 1)
                    iy = min(max(int((y + t * v) * idy), bj * ky), min((bj + 1) * ky, ny) - 1)
                    iz = min(max(int((z + t * w) * idz), bk * kz), min((bk + 1) * kz, nz) - 1)
                    vox = (iz * ny + iy) * nx + ix
                    m = mat[vox]
                    a0 = mu_tab[m, ie, 0]
                    mu_rho_t = a0 + fe * (mu_tab[m, ie + 1, 0] - a0)
                    st, r = next_uniform(st)
                    rho = row_rho[m] if use_row_rho else dens[vox]
                    if r * mu_b < rho * mu_rho_t:
                        real = True
                        break
                    st, r = next_uniform(st)  # virtual collision: a new flight in the same block
                    tau = -math.log(1.0 - r)
                    continue
                tau -= mu_b * seg
                t = tn
                if tn == tx:
                    if u > 0.0:
                        bi += 1
                        if bi >= bnx:
                            face = 1
                            break
                        tx = (min((bi + 1) * bsx, lx) - x) / u
                    else:
                        bi -= 1
                        if bi < 0:
                            face = 0
                            break
                        tx = (bi * bsx - x) / u
                elif tn == ty:
                    if v > 0.0:
                        bj += 1
                        if bj >= bny:
                            face = 3
                            break
                        ty = (min((bj + 1) * bsy, ly) - y) / v
                    else:
                        bj -= 1
                        if bj < 0:
                            face = 2
                            break
                        ty = (bj * bsy - y) / v
                else:
                    if w > 0.0:
                        bk += 1
                        if bk >= bnz:
                            face = 5
                            break
                        tz = (min((bk + 1) * bsz, lz) - z) / w
                    else:
                        bk -= 1
                        if bk < 0:
                            face = 4
                            break
                        tz = (bk * bsz - z) / w
                b = (bk * bny + bj) * bnx + bi
                rb = blk_ref[b]
                a0 = mu_tab[rb, ie, 0]
                mu_b = blk_scale[b] * (a0 + fe * (mu_tab[rb, ie + 1, 0] - a0))
            x = min(max(x + t * u, 0.0), lx)
            y = min(max(y + t * v, 0.0), ly)
            z = min(max(z + t * w, 0.0), lz)
            if not real:  # left the grid through ``face``
                last_face = face
                in_grid = False
                can_enter = False  # a straight ray never re-enters a convex box
                continue
            collided = True
            st, e, dep, u, v, w, alive = _interact(
                st, e, u, v, w, m, ie, fe, mu_rho_t, mu_tab, sz_tab, ray_cum, hx, hx_inv, nx_tab,
                cutoff_keV, fl_cum, fl_e)
            if per_voxel:
                local[tid, vox] += wt * dep
            elif score_mode == 1:
                local[tid, score_idx[vox]] += wt * dep
            else:
                local[tid, score_idx[m]] += wt * dep
            if n_conv > 0:
                c0 = conv_tab[m, ie]
                cloc[tid, m] += wt * dep * (c0 + fe * (conv_tab[m, ie + 1] - c0))
            if not alive:
                break
            te = (math.log(e) - ln_e0) * inv_dln_e
            ie = min(max(int(te), 0), n_e - 2)
            fe = te - ie
    edep = np.zeros(width)
    for i in prange(width):
        acc = 0.0
        for t in range(n_threads):
            acc += local[t, i]
        edep[i] = acc
    escape = np.zeros((N_ESCAPE_CATEGORIES, N_ESCAPE_QUANTITIES))
    world_keV = 0.0
    for t in range(n_threads):
        for c in range(N_ESCAPE_CATEGORIES):
            for q in range(N_ESCAPE_QUANTITIES):
                escape[c, q] += esc[t, c * 4 + q]
        world_keV += esc[t, 28]
    conv = np.zeros(n_conv)
    for t in range(n_threads):
        for i in range(n_conv):
            conv[i] += cloc[t, i]
    return edep, escape, world_keV, conv


@njit(**NJIT_FLAGS)
def sample_compton_many(seed, n, e_keV, sz_row, hx):
    """``n`` Compton cosines at ``e_keV`` (for tests of the sampler)."""
    out = np.empty(n)
    nx_tab = sz_row.shape[0]
    for i in range(n):
        st = stream_start(seed, 0, i)
        st, mu, e2 = sample_klein_nishina(st, e_keV, sz_row, 1.0 / hx, nx_tab)
        out[i] = mu
    return out


@njit(**NJIT_FLAGS)
def sample_rayleigh_many(seed, n, e_keV, cum_row, hx):
    """``n`` Rayleigh cosines at ``e_keV`` (for tests of the sampler)."""
    out = np.empty(n)
    nx_tab = cum_row.shape[0]
    for i in range(n):
        st = stream_start(seed, 0, i)
        st, mu = sample_rayleigh(st, e_keV, cum_row, hx, nx_tab)
        out[i] = mu
    return out


@njit(**NJIT_FLAGS)
def uniform_stream(seed, batch, history, n):
    """The first ``n`` uniforms of one history's stream (for tests)."""
    out = np.empty(n)
    st = stream_start(seed, batch, history)
    for i in range(n):
        st, out[i] = next_uniform(st)
    return out


# ----------------------------------------------------------------------------- CT fan-beam source
@njit(**NJIT_FLAGS)
def _upper_index(cdf, r):
    """First index k with cdf[k] > r (numpy's searchsorted side='right'), clamped to the last."""
    lo = 0
    hi = cdf.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if cdf[mid] <= r:
            lo = mid + 1
        else:
            hi = mid
    return min(lo, cdf.shape[0] - 1)


@njit(parallel=True, **NJIT_FLAGS)
def sample_fan_beam(n, seed, R, W, H, mode, angles_rad, start_deg, total_deg, z_start, feed,
                    knots, vals, zcdf, iso, axis, u, v, e_cdf, e_val, e_lo, e_hi, binned,
                    bt_x0, bt_inv_dx, bt_t, bt_ln_e0, bt_inv_dln, bt_mu, has_bowtie, min_weight):
    """``n`` photons of a CT fan beam (:class:`.ct.CTFanBeam`), photon ``i`` from the stream ``(seed, 0, i)``.

    Isocentre-plane point (fan x, slice y, mm) by rejection with density ∝ cos³γ; scan
    position by ``mode``: 0 discrete projection angles (``angles_rad``), 1 continuous
    (angle uniform over ``total_deg`` from ``start_deg``, helix ``z = z_start + feed·φ/360``),
    2 tube-current modulation (z from the piecewise-linear density ``vals`` on ``knots`` with
    segment CDF ``zcdf``, the angle following the helix). Energy from the spectrum's CDF
    (uniform inside a bin when ``binned``). Bowtie weight ``exp(−μ(E) t(x) / cos β)``
    (thickness ``bt_t`` on a uniform x grid, μ on the uniform ln E grid), at least ``min_weight``.

    Returns positions (mm), unit directions, energies (keV) and weights, world frame.
    """
    pos = np.empty((n, 3))
    dirs = np.empty((n, 3))
    energy = np.empty(n)
    weight = np.ones(n)
    R2 = R * R
    n_ang = angles_rad.shape[0]
    n_bt = bt_t.shape[0]
    n_mu = bt_mu.shape[0]
    for i in prange(n):
        st = stream_start(seed, 0, i)
        while True:
            st, r1 = next_uniform(st)
            st, r2 = next_uniform(st)
            st, r3 = next_uniform(st)
            x = (r1 - 0.5) * W
            y = (r2 - 0.5) * H
            q = R2 / (R2 + x * x + y * y)
            if r3 < q * math.sqrt(q):
                break
        z = 0.0
        if mode == 0:
            th = angles_rad[0]
            if n_ang > 1:
                st, r = next_uniform(st)
                th = angles_rad[min(int(r * n_ang), n_ang - 1)]
        elif mode == 1:
            st, r = next_uniform(st)
            phi = total_deg * r
            th = math.radians(start_deg + phi)
            z = z_start + feed * phi / 360.0
        else:
            st, r = next_uniform(st)
            k = min(_upper_index(zcdf, r), zcdf.shape[0] - 1)
            st, r = next_uniform(st)
            a = vals[k]
            b = vals[k + 1]
            dd = b - a
            if abs(dd) <= 1e-12 * (a + b):
                t = r
            else:
                t = (-a + math.sqrt(a * a + r * (b * b - a * a))) / dd
            t = min(max(t, 0.0), 1.0)
            z = knots[k] + t * (knots[k + 1] - knots[k])
            th = math.radians(start_deg + 360.0 * (z - z_start) / feed)
        cs = math.cos(th)
        sn = math.sin(th)
        c0 = cs * u[0] + sn * v[0]
        c1 = cs * u[1] + sn * v[1]
        c2 = cs * u[2] + sn * v[2]
        f0 = axis[1] * c2 - axis[2] * c1
        f1 = axis[2] * c0 - axis[0] * c2
        f2 = axis[0] * c1 - axis[1] * c0
        pos[i, 0] = iso[0] + z * axis[0] - R * c0
        pos[i, 1] = iso[1] + z * axis[1] - R * c1
        pos[i, 2] = iso[2] + z * axis[2] - R * c2
        d0 = R * c0 + x * f0 + y * axis[0]
        d1 = R * c1 + x * f1 + y * axis[1]
        d2 = R * c2 + x * f2 + y * axis[2]
        nrm = 1.0 / math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
        dirs[i, 0] = d0 * nrm
        dirs[i, 1] = d1 * nrm
        dirs[i, 2] = d2 * nrm
        st, r = next_uniform(st)
        k = _upper_index(e_cdf, r)
        if binned:
            st, r = next_uniform(st)
            e = e_lo[k] + (e_hi[k] - e_lo[k]) * r
        else:
            e = e_val[k]
        energy[i] = e
        if has_bowtie:
            tx = (x - bt_x0) * bt_inv_dx
            j = min(max(int(tx), 0), n_bt - 2)
            fx = tx - j
            thick = bt_t[j] + fx * (bt_t[j + 1] - bt_t[j])
            rx2 = R2 + x * x
            path = thick * math.sqrt((rx2 + y * y) / rx2)
            te = (math.log(e) - bt_ln_e0) * bt_inv_dln
            je = min(max(int(te), 0), n_mu - 2)
            fe = te - je
            mu = bt_mu[je] + fe * (bt_mu[je + 1] - bt_mu[je])
            weight[i] = max(math.exp(-0.1 * mu * path), min_weight)
    return pos, dirs, energy, weight


@njit(parallel=True, **NJIT_FLAGS)
def block_majorants(mat, dens, nx, ny, nz, kx, ky, kz, n_rows, ratio, cost):
    """Majorant of each block of ``kx × ky × kz`` voxels (:func:`transport`'s macro grid).

    ``ratio[m, r] = max_E (μ/ρ)_m / (μ/ρ)_r`` over the energies photons can have; ``cost[r]``
    ranks reference rows (a typical (μ/ρ)_r). For each block the reference row r among its
    materials minimising ``s cost[r]`` with ``s = max_m ρ_max,m ratio[m, r]``; returns
    ``(ref, scale, bnx, bny, bnz)``. A block of one material gets exactly its densest voxel.
    """
    bnx = (nx + kx - 1) // kx
    bny = (ny + ky - 1) // ky
    bnz = (nz + kz - 1) // kz
    nb = bnx * bny * bnz
    ref = np.zeros(nb, dtype=np.int32)
    scale = np.zeros(nb)
    for b in prange(nb):
        bi = b % bnx
        bj = (b // bnx) % bny
        bk = b // (bnx * bny)
        rho = np.zeros(n_rows)
        for k in range(bk * kz, min((bk + 1) * kz, nz)):
            for j in range(bj * ky, min((bj + 1) * ky, ny)):
                base = (k * ny + j) * nx
                for i in range(bi * kx, min((bi + 1) * kx, nx)):
                    m = mat[base + i]
                    d = dens[base + i]
                    if d > rho[m]:
                        rho[m] = d
        best = 1e300
        best_r = 0
        best_s = 0.0
        for r in range(n_rows):
            if rho[r] <= 0.0:
                continue
            sc = 0.0
            for m in range(n_rows):
                if rho[m] > 0.0:
                    sc = max(sc, rho[m] * ratio[m, r])
            c = sc * cost[r]
            if c < best:
                best = c
                best_r = r
                best_s = sc
        ref[b] = best_r
        scale[b] = best_s * (1.0 + 1e-6)  # (densities are float32: bound their rounding)
    return ref, scale, bnx, bny, bnz
