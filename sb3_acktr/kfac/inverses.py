"""Damped inverses of Kronecker factors, the two damping modes and their numerical safeguards."""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch as th

DampingMode = Literal["exact", "factored"]


class InverseFailure(RuntimeError):
    """A factor could not be decomposed or inverted, in its own dtype nor in float64."""


class EigenPreconditioner(NamedTuple):
    """
    What exact damping derives from the eigendecompositions once per refresh instead of at every step: the eigenvectors
    transposed (so that a step calls fewer operations) and ``1 / (lg la^T + damping)``.
    """

    a_vectors_transposed: th.Tensor
    g_vectors_transposed: th.Tensor
    damped_reciprocals: th.Tensor

    @classmethod
    def of(
        cls, a_vectors: th.Tensor, g_vectors: th.Tensor, a_values: th.Tensor, g_values: th.Tensor, damping: float
    ) -> "EigenPreconditioner":
        reciprocals = 1.0 / (g_values[:, None] * a_values[None, :] + damping)
        return cls(a_vectors.T.contiguous(), g_vectors.T.contiguous(), reciprocals)


@dataclass
class BlockInverse:
    """
    What preconditioning one block needs, computed from its factors ``A`` (input side) and ``G`` (output side).

    ``exact`` damping keeps the eigendecompositions ``A = Qa diag(la) Qa^T``, ``G = Qg diag(lg) Qg^T`` and applies
    ``(G (x) A + damping I)^-1`` exactly. ``factored`` damping keeps ``(A + pi sqrt(d) I)^-1`` and
    ``(G + sqrt(d) / pi I)^-1`` (Martens & Grosse, 2015, section 6.3). The symmetrised factors it was computed from are
    kept too: a save stores them (half the size of the eigenvectors, symmetric) and a load recomputes the rest.
    """

    mode: DampingMode
    damping: float
    a_factor: th.Tensor
    g_factor: th.Tensor
    a_matrix: th.Tensor  # Qa (exact) or the damped inverse of A (factored)
    g_matrix: th.Tensor  # Qg (exact) or the damped inverse of G (factored)
    a_eigenvalues: th.Tensor | None = None
    g_eigenvalues: th.Tensor | None = None
    pi: float = 1.0
    _eigen: EigenPreconditioner | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode == "exact":
            assert self.a_eigenvalues is not None and self.g_eigenvalues is not None
            self._eigen = EigenPreconditioner.of(
                self.a_matrix, self.g_matrix, self.a_eigenvalues, self.g_eigenvalues, self.damping
            )

    def precondition(self, grad: th.Tensor) -> th.Tensor:
        """
        :param grad: gradient matrix ``M`` of shape ``(out, in)``
        :return: ``(G (x) A + damping)^-1 vec(M)`` reshaped like ``M`` (its factored approximation in factored mode)
        """
        if self.mode == "factored":
            return self.g_matrix @ grad @ self.a_matrix
        eigen = self._eigen
        assert eigen is not None
        rotated = eigen.g_vectors_transposed @ grad @ self.a_matrix * eigen.damped_reciprocals
        return self.g_matrix @ rotated @ eigen.a_vectors_transposed

    def decomposition(self) -> list[th.Tensor]:
        """The tensors computed from the factors: the two matrices, and the eigenvalues in exact mode (``pi`` aside)."""
        tensors = [self.a_matrix, self.g_matrix]
        if self.a_eigenvalues is not None and self.g_eigenvalues is not None:
            tensors += [self.a_eigenvalues, self.g_eigenvalues]
        return tensors

    def eigenvalue_range(self) -> tuple[float, float, float, float]:
        """Smallest and largest eigenvalue of ``A`` and of ``G`` (exact mode), or of the damped inverses' inputs."""
        if self.a_eigenvalues is not None and self.g_eigenvalues is not None:
            a_eig, g_eig = self.a_eigenvalues, self.g_eigenvalues
        else:
            # The eigenvalues of a damped inverse are 1 / (lambda + damping): report lambda + damping.
            a_eig = 1.0 / th.linalg.eigvalsh(self.a_matrix)
            g_eig = 1.0 / th.linalg.eigvalsh(self.g_matrix)
        return a_eig.min().item(), a_eig.max().item(), g_eig.min().item(), g_eig.max().item()


def symmetrize(matrix: th.Tensor) -> th.Tensor:
    return (matrix + matrix.T) / 2


def _with_float64_retry(
    function: Callable[[th.Tensor], tuple[th.Tensor, ...]], matrix: th.Tensor
) -> tuple[bool, tuple[th.Tensor, ...]]:
    """
    Run ``function`` on ``matrix``; if it raises or returns non-finite values, run it again in float64.

    :return: whether the float64 retry was needed, and the results cast back to ``matrix``'s dtype
    :raises InverseFailure: if the float64 attempt fails too
    """
    for retried, dtype in ((False, matrix.dtype), (True, th.float64)):
        if retried and matrix.dtype == th.float64:
            break
        try:
            results = function(matrix.to(dtype))
        except th.OutOfMemoryError:
            raise  # not a numerical failure: a float64 retry would only need more memory
        except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
            continue
        if all(bool(th.isfinite(result).all()) for result in results):
            return retried, tuple(result.to(matrix.dtype) for result in results)
    raise InverseFailure("decomposition failed in float64 too")


def _eigh(matrix: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    eigenvalues, eigenvectors = th.linalg.eigh(matrix)
    # A factor is positive semi-definite: negative eigenvalues are round-off.
    return eigenvalues.clamp(min=0.0), eigenvectors


def _cholesky_inverse(matrix: th.Tensor) -> tuple[th.Tensor]:
    return (th.cholesky_inverse(th.linalg.cholesky(matrix)),)


def pi_adjustment(a_factor: th.Tensor, g_factor: th.Tensor) -> float:
    """
    ``pi = sqrt((tr(A) / dim A) / (tr(G) / dim G))``, the split of the damping between the two factors that
    minimises the norm of the error of factored Tikhonov damping. Falls back to 1 when a trace is not positive.
    """
    a_mean = a_factor.diagonal().mean().item()
    g_mean = g_factor.diagonal().mean().item()
    if not (0.0 < a_mean < math.inf and 0.0 < g_mean < math.inf):
        return 1.0
    return (a_mean / g_mean) ** 0.5


def compute_inverse(a_factor: th.Tensor, g_factor: th.Tensor, mode: DampingMode, damping: float) -> tuple[BlockInverse, int]:
    """
    :param a_factor: input-side factor ``A``
    :param g_factor: output-side factor ``G``
    :param mode: ``"exact"`` or ``"factored"``
    :param damping: Tikhonov damping ``d``
    :return: the block's inverse and how many float64 retries it needed
    :raises InverseFailure: if a factor cannot be decomposed even in float64
    """
    a_factor, g_factor = symmetrize(a_factor), symmetrize(g_factor)
    if mode == "exact":
        a_retry, (a_eigenvalues, a_eigenvectors) = _with_float64_retry(_eigh, a_factor)
        g_retry, (g_eigenvalues, g_eigenvectors) = _with_float64_retry(_eigh, g_factor)
        inverse = BlockInverse(mode, damping, a_factor, g_factor, a_eigenvectors, g_eigenvectors, a_eigenvalues, g_eigenvalues)
        return inverse, int(a_retry) + int(g_retry)
    pi = pi_adjustment(a_factor, g_factor)
    root = damping**0.5
    eye_a = th.eye(a_factor.shape[0], dtype=a_factor.dtype, device=a_factor.device)
    eye_g = th.eye(g_factor.shape[0], dtype=g_factor.dtype, device=g_factor.device)
    a_retry, (a_inverse,) = _with_float64_retry(_cholesky_inverse, a_factor + pi * root * eye_a)
    g_retry, (g_inverse,) = _with_float64_retry(_cholesky_inverse, g_factor + root / pi * eye_g)
    return BlockInverse(mode, damping, a_factor, g_factor, a_inverse, g_inverse, pi=pi), int(a_retry) + int(g_retry)
