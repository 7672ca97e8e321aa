"""BF protocols: ``fast`` (void masked, distance matching) and ``paper`` (the SegNet script's rules).

Hand-worked cases (the arithmetic is in the comments), a brute-force one-to-one reference, and
the wiring: SegmentationMetrics, TrainConfig, SemanticTask and ``seglab evaluate``'s flag.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from seglab.core.config import TrainConfig, load_config
from seglab.core.errors import SeglabError
from seglab.metrics import BF_PROTOCOLS, SegmentationMetrics, boundary_f1, boundary_f1_per_class, boundary_map
from seglab.metrics.boundary_paper import one_to_one_matches

BOTH = pytest.mark.parametrize("protocol", BF_PROTOCOLS)


def smooth(seed: int, num_classes: int = 11, shape: tuple[int, int] = (60, 80), sigma: float = 3.0) -> np.ndarray:
    """Blobby random label map: argmax over smoothed noise, one channel per class."""
    noise = np.random.default_rng(seed).standard_normal((num_classes, *shape))
    return gaussian_filter(noise, sigma=(0, sigma, sigma)).argmax(0)


def shifted_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prediction (the target shifted by (1, 2) px, with blobs relabelled), the target, the target with void."""
    target = smooth(seed)
    pred = np.roll(target, (1, 2), axis=(0, 1))
    blob = smooth(seed + 100, num_classes=5) == 0
    pred[blob] = smooth(seed + 300)[blob]
    with_void = target.copy()
    with_void[smooth(seed + 200, num_classes=4) == 0] = 11
    return pred, target, with_void


# --------------------------------------------------------------------------- hand-worked cases


def test_void_edge_counts_in_paper_only():
    # 4 x 6 image, d = 0.1 * hypot(4, 6) = 0.72 px < 1: only exact matches count.
    # GT: cols 0-1 class 0, cols 2-3 class 1, cols 4-5 void (255). Pred: cols 0-1 class 0, cols 2-5 class 1.
    # fast: pairs touching GT void are masked. Contours: class 0 col 1, class 1 col 2, in both maps
    #   (4 px each, all matched) -> F1 = 1, 1 -> BF = 1.
    # paper: void is just "not 1": GT class 1 also has a contour on col 3 (next to void) -> 8 px; pred class 1
    #   (cols 2-5, image border no boundary) only col 2 -> 4 px. Matched 4: P = 4/4, R = 4/8, F1 = 2/3.
    #   Class 0 as before: F1 = 1. BF = (1 + 2/3) / 2 = 5/6.
    gt = np.array([[0, 0, 1, 1, 255, 255]] * 4)
    pred = np.array([[0, 0, 1, 1, 1, 1]] * 4)
    assert boundary_f1_per_class(pred, gt, 2, 255, 0.1, "fast") == pytest.approx([1.0, 1.0])
    assert boundary_f1_per_class(pred, gt, 2, 255, 0.1, "paper") == pytest.approx([1.0, 2 / 3])
    assert boundary_f1(pred, gt, 2, 255, 0.1, "paper") == pytest.approx(5 / 6)


def test_doubled_predicted_contour_one_to_one_halves_precision():
    # 4 x 8 image, d = 0.15 * hypot(4, 8) = 1.34 px: 4-neighbours (1 px) match, diagonals (1.41 px) do not.
    # GT: cols 0-3 class 0, cols 4-7 class 1. Pred: cols 0-3 class 0, cols 4-5 class 1, cols 6-7 class 0.
    # Class 1: GT contour col 4 (4 px); the pred strip is 2 px wide, so both cols 4 and 5 are contour (8 px),
    #   a doubled contour, every pixel within 1 px of GT col 4.
    #   fast (distance): P = 8/8 = 1, R = 4/4 = 1 -> F1 = 1.
    #   paper (one-to-one): only 4 GT pixels to share -> 4 matches, P = 4/8 = 1/2, R = 4/4 -> F1 = 2/3.
    # Class 0: GT contour col 3 (4 px); pred contour cols 3 and 6 (8 px), col 6 is 3 px from col 3.
    #   Both rules: 4 matched, P = 1/2, R = 1, F1 = 2/3.
    # BF: fast (1 + 2/3) / 2 = 5/6, paper (2/3 + 2/3) / 2 = 2/3. No void: the contours are the same in both.
    gt = np.array([[0, 0, 0, 0, 1, 1, 1, 1]] * 4)
    pred = np.array([[0, 0, 0, 0, 1, 1, 0, 0]] * 4)
    assert boundary_f1_per_class(pred, gt, 2, None, 0.15, "fast") == pytest.approx([2 / 3, 1.0])
    assert boundary_f1_per_class(pred, gt, 2, None, 0.15, "paper") == pytest.approx([2 / 3, 2 / 3])
    assert boundary_f1(pred, gt, 2, None, 0.15, "fast") == pytest.approx(5 / 6)
    assert boundary_f1(pred, gt, 2, None, 0.15, "paper") == pytest.approx(2 / 3)


@BOTH
def test_identical_maps_score_one(protocol):
    # Same map, same contours: every contour pixel matches itself (distance 0), one-to-one too -> F1 = 1.
    for seed in range(3):
        labels = smooth(seed)
        assert boundary_f1(labels, labels, 11, 11, protocol=protocol) == 1.0
    split = np.array([[0, 0, 1, 1, 2, 2]] * 5)
    assert boundary_f1(split, split, 3, protocol=protocol) == 1.0


@BOTH
@pytest.mark.parametrize(("d", "expected"), [(2.5, 0.0), (3.0, 1.0)])
def test_tolerance_is_respected(protocol, d, expected):
    # 20 x 20, GT split 9|10 (class 0 contour col 9, class 1 col 10), pred split 12|13 (cols 12, 13):
    # every contour pixel is 3 px from its partner (same row). d = 2.5: nothing matches, P = R = 0, BF 0.
    # d = 3.0 (exactly on the circle): the 20 row-pairs of each class match one-to-one, BF 1.
    gt = np.zeros((20, 20), dtype=np.int64)
    gt[:, 10:] = 1
    pred = np.roll(gt, 3, axis=1)
    pred[:, :3] = 0
    tolerance = d / math.hypot(20, 20)
    assert boundary_f1(pred, gt, 2, tolerance=tolerance, protocol=protocol) == pytest.approx(expected)


def test_class_predicted_only_on_void_is_counted_in_paper():
    # 6 x 6 GT all class 0 except a void block rows 2-3 x cols 2-3; pred: class 1 exactly on that block.
    # fast: pairs touching void are masked -> class 0 has no contour in either map -> 1; class 1 is
    #   predicted on void only -> not counted. BF = 1.
    # paper: class 0's contour is the 12-px ring around the block in both maps -> 1; class 1 is in the
    #   prediction and not in the GT -> counted, 0. BF = (1 + 0) / 2 = 1/2.
    gt = np.zeros((6, 6), dtype=np.int64)
    gt[2:4, 2:4] = 255
    pred = np.zeros((6, 6), dtype=np.int64)
    pred[2:4, 2:4] = 1
    assert boundary_f1(pred, gt, 2, 255, protocol="fast") == 1.0
    assert boundary_f1_per_class(pred, gt, 2, 255, protocol="paper") == pytest.approx([1.0, 0.0])
    assert boundary_f1(pred, gt, 2, 255, protocol="paper") == pytest.approx(0.5)


@BOTH
def test_all_void_image(protocol):
    # No labelled GT pixel. fast: nothing is counted -> NaN (left out of the data-set mean).
    # paper: the predicted class 0 is counted (in the prediction, not in the GT) -> 0.
    void = np.full((5, 5), 255)
    score = boundary_f1(np.zeros((5, 5), dtype=int), void, 2, 255, protocol=protocol)
    assert math.isnan(score) if protocol == "fast" else score == 0.0


# --------------------------------------------------------------------------- fast is unchanged

# Computed with the code before bf_protocol existed (boundary_f1 of shifted_case(seed)).
FAST_BEFORE = {
    1: (0.14198427986834075, 0.14286741819631904, 0.704885593276746),
    2: (0.15698879312286768, 0.1571416589596567, 0.7444547885229494),
    3: (0.1496667192620844, 0.14363618891211347, 0.6473453245647002),
}


@pytest.mark.parametrize("seed", sorted(FAST_BEFORE))
def test_fast_results_are_unchanged(seed):
    pred, target, with_void = shifted_case(seed)
    expected = FAST_BEFORE[seed]
    assert boundary_f1(pred, target, 11, 11) == expected[0]  # the default protocol is fast
    assert boundary_f1(pred, with_void, 11, 11, protocol="fast") == expected[1]
    assert boundary_f1(pred, with_void, 11, 11, tolerance=0.02, protocol="fast") == expected[2]


def test_fast_dataset_score_is_unchanged():
    m = SegmentationMetrics(11, 11)
    for seed in (1, 2, 3):
        pred, _, with_void = shifted_case(seed)
        m.update(pred, with_void)
    out = m.compute()
    assert out["bf"] == 0.14788175535602974
    assert out["bf_protocol"] == "fast"


# --------------------------------------------------------------------------- paper against a reference


def _kuhn(adj: list[list[int]], n_right: int) -> int:
    """Size of a maximum bipartite matching by augmenting paths (Kuhn's algorithm)."""
    owner = [-1] * n_right

    def augment(u: int, seen: list[bool]) -> bool:
        for v in adj[u]:
            if not seen[v]:
                seen[v] = True
                if owner[v] < 0 or augment(owner[v], seen):
                    owner[v] = u
                    return True
        return False

    return sum(augment(u, [False] * n_right) for u in range(len(adj)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_one_to_one_matches_a_brute_force_matching(seed):
    rng = np.random.default_rng(seed)
    pred, target = smooth(seed, 4, (24, 30), 2.0), smooth(seed + 50, 4, (24, 30), 2.0)
    max_dist = float(rng.uniform(1.0, 3.5))
    pts = [np.flatnonzero(boundary_map(m)) for m in (pred, target)]
    labs = [m.ravel()[p] for m, p in zip((pred, target), pts)]
    got = one_to_one_matches(pts[0], labs[0], pts[1], labs[1], 30, 4, max_dist)
    for c in range(4):
        a = np.stack(np.divmod(pts[0][labs[0] == c], 30), 1)
        b = np.stack(np.divmod(pts[1][labs[1] == c], 30), 1)
        adj = [list(np.flatnonzero(((b - p) ** 2).sum(1) <= max_dist**2)) for p in a]
        assert got[c] == _kuhn(adj, len(b))


@pytest.mark.parametrize("seed", [0, 1])
def test_paper_never_exceeds_fast_without_void(seed):
    # Without void both protocols see the same contours; a one-to-one match matches at most as many pixels.
    pred, target, _ = shifted_case(seed)
    fast = boundary_f1_per_class(pred, target, 11, tolerance=0.02, protocol="fast")
    paper = boundary_f1_per_class(pred, target, 11, tolerance=0.02, protocol="paper")
    assert np.array_equal(np.isnan(fast), np.isnan(paper))
    assert (paper[~np.isnan(paper)] <= fast[~np.isnan(fast)] + 1e-12).all()


# --------------------------------------------------------------------------- wiring


def test_segmentation_metrics_carry_and_report_the_protocol():
    gt = np.array([[0, 0, 1, 1, 255, 255]] * 4)
    pred = np.array([[0, 0, 1, 1, 1, 1]] * 4)
    paper = SegmentationMetrics(2, 255, bf_tolerance=0.1, bf_protocol="paper")
    paper.update(pred, gt)
    assert paper.compute()["bf"] == pytest.approx(5 / 6)  # the void case above
    assert paper.compute()["bf_protocol"] == "paper"
    both = paper + paper
    assert both.bf_protocol == "paper" and both.compute()["bf"] == pytest.approx(5 / 6)
    with pytest.raises(SeglabError, match="protocol"):
        SegmentationMetrics(2, 255).merge(paper)
    assert SegmentationMetrics(2, 255, compute_bf=False).compute()["bf_protocol"] is None
    with pytest.raises(SeglabError, match="fast, paper"):
        SegmentationMetrics(2, 255, bf_protocol="bsds")
    with pytest.raises(SeglabError, match="fast, paper"):
        boundary_f1(pred, gt, 2, 255, protocol="exact")


def test_train_bf_protocol_key():
    assert TrainConfig().bf_protocol == "fast"
    assert load_config(None, ["--train.bf_protocol", "paper"]).train.bf_protocol == "paper"
    with pytest.raises(SeglabError, match=r"train\.bf_protocol.*fast, paper.*Did you mean 'paper'"):
        load_config(None, ["--train.bf_protocol", "papr"])
    with pytest.raises(SeglabError, match="fast, paper"):
        TrainConfig(bf_protocol="slow")


def test_semantic_task_takes_the_recipe_protocol():
    from seglab.data import dataset_info
    from seglab.tasks.semantic import SemanticTask

    cfg = load_config(None, ["--train.bf_protocol", "paper", "--loss.class_weights", "none"])
    task = SemanticTask.from_config(cfg, dataset_info(cfg.data))
    assert task.bf_protocol == "paper"
    assert task.new_metrics().metrics.bf_protocol == "paper"
    labels = torch.as_tensor(smooth(0, task.num_classes, (24, 32)))
    metrics = task.new_metrics()
    metrics.metrics.update(labels, labels)
    assert metrics.compute()["bf_protocol"] == "paper"


def test_evaluate_cli_flag():
    from seglab.apps.cli import _parser

    parser = _parser()
    assert parser.parse_args(["evaluate", "x.pt"]).bf_protocol is None  # None: the checkpoint's recipe value
    assert parser.parse_args(["evaluate", "x.pt", "--bf-protocol", "paper"]).bf_protocol == "paper"
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "x.pt", "--bf-protocol", "bsds"])


def test_one_to_one_matching_is_maximum_on_random_graphs():
    """seglab's Hopcroft-Karp (greedy start) finds matchings as large as scipy's, and valid ones."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    from seglab.metrics.boundary_paper import _maximum_matching

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(1, 30, size=2))
        edges = np.unique(np.stack([rng.integers(0, n, 3 * (n + m)), rng.integers(0, m, 3 * (n + m))], 1), axis=0)
        i, j = edges[:, 0], edges[:, 1]
        order = np.lexsort((rng.random(len(i)), i))
        ours = np.asarray(_maximum_matching(i[order], j[order], n, m))
        graph = csr_matrix((np.ones(len(i)), (i, j)), shape=(n, m))
        assert (ours >= 0).sum() == (maximum_bipartite_matching(graph, perm_type="column") >= 0).sum()
        partners = ours[ours >= 0]
        assert len(set(partners.tolist())) == len(partners)  # one to one
        assert set(zip(np.flatnonzero(ours >= 0).tolist(), partners.tolist())) <= set(zip(i.tolist(), j.tolist()))
