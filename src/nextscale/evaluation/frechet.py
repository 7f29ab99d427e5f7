"""The metric math on feature sets: Fréchet distance, KID, k-NN precision/recall, Inception Score.

Fréchet distance (Heusel et al. 2017): fit a Gaussian to each feature set and measure
    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
KID, kernel inception distance (Bińkowski et al. 2018), here in any feature space: the squared maximum mean
discrepancy between the two sets with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, estimated without
bias (the diagonal terms k(x_i, x_i) are left out, so it can be slightly negative, and its expectation does not
depend on the number of images, unlike the Fréchet distance's). Mean and std over random subsets.
Precision/recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around its points
whose radius is the distance to the k-th nearest neighbour in the same set; precision is the fraction of
generated points inside the real manifold, recall the fraction of real points inside the generated one.
Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), averaged over splits.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance

def feature_statistics(features_ND) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, N - 1) of N feature vectors, in float64."""
    feats = np.asarray(features_ND.detach().cpu() if isinstance(features_ND, torch.Tensor) else features_ND,
                       dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be a 2-d array (N, D), got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {feats.shape[0]}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """(S1 S2)^(1/2) by scipy; a non-finite result means a (near-)singular product: the caller regularises."""
    import scipy.linalg  # here, not at the top: `import nextscale` stays free of scipy's import time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about singular products; we check the result ourselves
        return scipy.linalg.sqrtm(sigma1 @ sigma2)


def _trace_sqrt_product_symmetric(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the eigenvalues of a symmetric PSD matrix, exact for
    singular covariances (rounding-level negative eigenvalues are clipped to 0)."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root @ sigma2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, max_imaginary: float = 1e-3) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    S1 S2 is a product of two PSD matrices: its eigenvalues are real and >= 0 and its square root has a
    real trace, but with few samples (N <= D) the covariances are singular and sqrtm can come back
    non-finite or with rounding-level imaginary parts. Then we add eps to both diagonals and retry, and
    drop an imaginary part that is small relative to the result; when it is large (few samples: a handful of
    images in 128 dimensions), the trace comes from the symmetric form Tr((S1^1/2 S2 S1^1/2)^1/2) instead.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    D = mu1.shape[0]
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"the means must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (D, D) or sigma2.shape != (D, D):
        raise ValueError(f"the covariances must be {D}x{D} like the means, got {sigma1.shape} and {sigma2.shape}")

    covmean = _trace_sqrt_product(sigma1, sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(D) * eps
        covmean = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    trace_covmean = None
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(covmean).max()))
        worst = float(np.abs(covmean.imag).max())
        if worst > max_imaginary * scale or not np.isfinite(covmean).all():
            trace_covmean = _trace_sqrt_product_symmetric(sigma1, sigma2)
        covmean = covmean.real
    elif not np.isfinite(covmean).all():
        trace_covmean = _trace_sqrt_product_symmetric(sigma1, sigma2)
    if trace_covmean is None:
        trace_covmean = float(np.trace(covmean))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def frechet_distance_of_features(features1_ND, features2_MD) -> float:
    return frechet_distance(*feature_statistics(features1_ND), *feature_statistics(features2_MD))


# ----------------------------------------------------------------------------------------------------------------
# KID: unbiased MMD^2 with a cubic polynomial kernel

def polynomial_kernel(x_ND: torch.Tensor, y_MD: torch.Tensor, degree: int = 3, coef0: float = 1.0) -> torch.Tensor:
    """(x.y / d + coef0)^degree for every pair: (N, M)."""
    return (x_ND @ y_MD.T / x_ND.shape[1] + coef0) ** degree


def mmd2_unbiased(x_ND, y_MD, degree: int = 3) -> float:
    """Unbiased MMD^2 between the two sets with the polynomial kernel:
    sum_{i!=j} k(x_i, x_j) / (n(n-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / (nm)."""
    x, y = _as_tensor(x_ND), _as_tensor(y_MD)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"an unbiased MMD needs at least 2 feature vectors per set, got {n} and {m}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x, degree), polynomial_kernel(y, y, degree), polynomial_kernel(x, y, degree)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kernel_inception_distance(features1_ND, features2_MD, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> dict:
    """KID: {'kid', 'kid_std', 'subsets', 'subset_size'}, the mean and std of the unbiased MMD^2 over `num_subsets`
    random subsets of min(subset_size, N, M) vectors of each set (drawn without replacement within a subset).
    When that size takes all of both sets, every subset would be the same: one subset, std 0."""
    x, y = _as_tensor(features1_ND), _as_tensor(features2_MD)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    size = min(subset_size, len(x), len(y))
    if size == len(x) == len(y):
        num_subsets = 1
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        pick_x = np.sort(rng.choice(len(x), size=size, replace=False))
        pick_y = np.sort(rng.choice(len(y), size=size, replace=False))
        values.append(mmd2_unbiased(x[pick_x], y[pick_y]))
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)), "subsets": num_subsets,
            "subset_size": size}


# ----------------------------------------------------------------------------------------------------------------
# Precision / recall on k-NN manifolds

def _as_tensor(features) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if t.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(t.shape)}")
    return t.detach().double()


def knn_radii(features_ND, k: int = 3, batch_size: int = 1000) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (the point itself excluded)."""
    feats = _as_tensor(features_ND)
    if not 1 <= k < len(feats):
        raise ValueError(f"k-NN radii need 1 <= k < number of points, got k={k} for {len(feats)} points")
    radii = []
    for i in range(0, len(feats), batch_size):
        d = torch.cdist(feats[i:i + batch_size], feats)
        # The k+1 smallest distances include the point's distance to itself (0): the k-th neighbour is the last.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def manifold_coverage(query_ND, support_MD, support_radii_M: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of query points within the ball of at least one support point."""
    query, support = _as_tensor(query_ND), _as_tensor(support_MD)
    if query.shape[1] != support.shape[1]:
        raise ValueError(f"feature dimensions differ: {query.shape[1]} and {support.shape[1]}")
    inside = 0
    for i in range(0, len(query), batch_size):
        d = torch.cdist(query[i:i + batch_size], support)
        inside += int((d <= support_radii_M[None, :]).any(dim=1).sum())
    return inside / len(query)


def precision_recall(real_ND, fake_MD, k: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """(precision, recall) of the generated set `fake` against `real` (Kynkäänniemi et al. 2019)."""
    real_radii = knn_radii(real_ND, k, batch_size)
    fake_radii = knn_radii(fake_MD, k, batch_size)
    precision = manifold_coverage(fake_MD, real_ND, real_radii, batch_size)
    recall = manifold_coverage(real_ND, fake_MD, fake_radii, batch_size)
    return precision, recall


# ----------------------------------------------------------------------------------------------------------------
# Inception Score

def inception_score(logits_NC, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of exp(mean_x KL(p(y|x) || p(y))), p(y) the part's mean prediction.

    Takes logits (log-probabilities work too: softmax ignores a constant shift). The score lies in
    [1, number of classes]: 1 when every prediction is the same, C when each is certain and the classes are
    used equally often.
    """
    logits = torch.as_tensor(np.asarray(logits_NC) if not isinstance(logits_NC, torch.Tensor) else logits_NC)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
    if not 1 <= splits <= len(logits):
        raise ValueError(f"splits must be in [1, number of images = {len(logits)}], got {splits}")
    log_p = torch.log_softmax(logits.detach().double(), dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_py = torch.logsumexp(part, dim=0) - np.log(len(part))  # log of the mean prediction
        kl = (part.exp() * (part - log_py)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))
