"""The Winograd transforms F(m, r) over the points 0, ±1, ±2, ±1/2 and ∞ (Lavin and Gray's
modified Toom-Cook construction, as wincnn writes it), checked exactly on random integers and
printed as Rust tables:

    python3 scripts/winograd_matrices.py 4 5     # F(4×4, 5×5): src/backend/cpu/conv/winograd.rs
    python3 scripts/winograd_matrices.py 6 3     # F(6×6, 3×3): tried on rblock1, see README

y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation y[i] = Σ_k g[k]·d[i + k] of an (m + r − 1)-long
input with an r-tap filter; in 2-D, y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A. Needs only the standard
library.
"""

import random
import sys
from fractions import Fraction as F

POINTS = [F(0), F(1), F(-1), F(2), F(-2), F(1, 2), F(-1, 2)]


def poly_mul(p, q):
    """Product of two polynomials, coefficients lowest power first."""
    out = [F(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def poly_from_roots(roots):
    p = [F(1)]
    for a in roots:
        p = poly_mul(p, [-a, F(1)])
    return p


def matrices(m, r):
    n = m + r - 1
    points = POINTS[: n - 1]
    assert len(points) == n - 1, f"F({m}, {r}) needs {n - 1} finite points; this table has {len(POINTS)}"
    at = [[p**i for p in points] + [F(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(points):
        f = F(1)
        for k, q in enumerate(points):
            if k != j:
                f *= p - q
        g.append([p**k / f for k in range(r)])
    g.append([F(0)] * (r - 1) + [F(1)])
    bt = [poly_from_roots([q for k, q in enumerate(points) if k != j]) + [F(0)] for j in range(len(points))]
    bt.append(poly_from_roots(points))
    return at, g, bt


def check(m, r, at, g, bt):
    n = m + r - 1
    for _ in range(20):
        d = [F(random.randint(-9, 9)) for _ in range(n)]
        w = [F(random.randint(-9, 9)) for _ in range(r)]
        gw = [sum(row[k] * w[k] for k in range(r)) for row in g]
        bd = [sum(row[k] * d[k] for k in range(n)) for row in bt]
        y = [sum(at[i][j] * gw[j] * bd[j] for j in range(n)) for i in range(m)]
        assert y == [sum(w[k] * d[i + k] for k in range(r)) for i in range(m)], "the transforms are wrong"


def rust(name, rows):
    def number(x):
        if x.denominator == 1 or x.denominator in (2, 4, 8):
            return repr(float(x))
        return f"{float(x.numerator)!r} / {float(x.denominator)!r}"

    print(f"{name} = [")
    for row in rows:
        print("    [" + ", ".join(number(x) for x in row) + "],")
    print("];")


def main():
    m, r = (int(a) for a in sys.argv[1:3]) if len(sys.argv) == 3 else (4, 5)
    at, g, bt = matrices(m, r)
    check(m, r, at, g, bt)
    print(f"// F({m}x{m}, {r}x{r}): checked exactly on random integers")
    rust("AT", at)
    rust("G", g)
    rust("BT", bt)


if __name__ == "__main__":
    main()
