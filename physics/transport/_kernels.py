"""Numba kernels of the photon-transport engine (private; callers validate).

Everything here takes only arrays and scalars. Units: lengths in cm in the *grid frame*
(x along array axis 2, y along axis 1, z along axis 0; the grid box is
``[0, nx·dx] × [0, ny·dy] × [0, nz·dz]``), energies in keV.

* Random numbers: splitmix64 (Steele, Lea & Flood, OOPSLA 2014) as a counter-based
  stream; history ``h`` of batch ``b`` starts from ``mix(mix(mix(seed)+b)+h)``, so a
  result does not depend on how histories are split over threads.
* Tracking: Woodcock (delta) tracking (Woodcock et al., ANL-7050, 1965) with the
  energy-dependent majorant ``μ_max(E) = max_m ρ_max,m (μ/ρ)_m(E)``.
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
              mu_tab, majorant, ln_e0, inv_dln_e, sz_tab, ray_cum, hx,
              cutoff_keV, seed, batch, history_offset, n_threads,
              world_row, world_rho, world_margin_cm, fl_cum, fl_e, conv_tab):
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
    majorant : float64 (n_E,)
        μ_max (1/cm) of the grid on the same grid.
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

    Returns
    -------
    edep_keV : float64 (nz*ny*nx,)
        Weighted energy deposited per voxel.
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
    stride = ((nvox + 7) // 8) * 8 + 8
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
    n_e = majorant.shape[0]
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
            # inside the grid: Woodcock tracking
            mu_max = majorant[ie] + fe * (majorant[ie + 1] - majorant[ie])
            st, r = next_uniform(st)
            s = -math.log(1.0 - r) / mu_max
            xn = x + s * u
            yn = y + s * v
            zn = z + s * w
            if xn < 0.0 or xn >= lx or yn < 0.0 or yn >= ly or zn < 0.0 or zn >= lz:
                last_face, t_out = _exit_face(x, y, z, u, v, w, lx, ly, lz)
                x += t_out * u
                y += t_out * v
                z += t_out * w
                in_grid = False
                can_enter = False  # a straight ray never re-enters a convex box
                continue
            x = xn
            y = yn
            z = zn
            ix = min(int(x * idx), nx - 1)
            iy = min(int(y * idy), ny - 1)
            iz = min(int(z * idz), nz - 1)
            vox = (iz * ny + iy) * nx + ix
            m = mat[vox]
            rho = dens[vox]
            a0 = mu_tab[m, ie, 0]
            mu_rho_t = a0 + fe * (mu_tab[m, ie + 1, 0] - a0)
            st, r = next_uniform(st)
            if r * mu_max >= rho * mu_rho_t:
                continue  # virtual collision
            collided = True
            st, e, dep, u, v, w, alive = _interact(
                st, e, u, v, w, m, ie, fe, mu_rho_t, mu_tab, sz_tab, ray_cum, hx, hx_inv, nx_tab,
                cutoff_keV, fl_cum, fl_e)
            local[tid, vox] += wt * dep
            if n_conv > 0:
                c0 = conv_tab[m, ie]
                cloc[tid, m] += wt * dep * (c0 + fe * (conv_tab[m, ie + 1] - c0))
            if not alive:
                break
            te = (math.log(e) - ln_e0) * inv_dln_e
            ie = min(max(int(te), 0), n_e - 2)
            fe = te - ie
    edep = np.zeros(nvox)
    for t in range(n_threads):
        for i in range(nvox):
            edep[i] += local[t, i]
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
