"""E2VPT pruning search (vapt.peft.e2vpt_pruning) against re-statements of the official
ChengHan111/E2VPT @ 7a66e75 trainer (calculate_importance, determine_mask_sequence, what_tokens_to_mask,
what_tokens_pieces_to_mask) on a tiny 2-block, 32-dim ViT with fixed batches."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vapt import build_model
from vapt.peft import make_config
from vapt.peft.e2vpt_pruning import (candidate_prunings, mask_counts, mask_importance, pieces_to_prune, rewind,
                                     tokens_to_prune)

N_TOK, N_PIECES = 5, 16


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", num_classes=4, prompt=make_config("e2vpt", num_tokens=N_TOK,
                        num_kv_tokens=2), img_size=32, depth=2, embed_dim=32, num_heads=2).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.method.parameters():
            if p.dim() > 1 and p is not model.method.piece_mask:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g))
        model.head.bias.zero_()
    batches = [(torch.randn(3, 3, 32, 32, generator=g), torch.randint(0, 4, (3,), generator=g)) for _ in range(3)]
    return model, batches


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def official_scores(model, batches, lr, normalize):
    """calculate_importance: eval mode; per batch zero_grad, backward, add the masks' grads, optimiser step;
    divide by the number of batches; optional L2 normalisation (+1e-20)."""
    opt = torch.optim.SGD(_params(model), lr=lr, momentum=0.9)
    tok, pie = torch.zeros(N_TOK), torch.zeros(N_TOK, N_PIECES)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tok += model.method.token_mask.grad
        for t in range(N_TOK):
            pie[t] += model.method.piece_mask.grad[t]
        opt.step()
    tok, pie = tok / len(batches), pie / len(batches)
    if normalize:
        tok = tok / (torch.pow(torch.pow(tok, 2).sum(), 0.5).unsqueeze(-1) + 1e-20)
        pie = pie / (torch.pow(torch.pow(pie, 2).sum(-1), 0.5).unsqueeze(-1) + 1e-20)
    return tok, pie


@pytest.mark.parametrize("normalize", [False, True])
def test_importance_scores_equal_the_official_loop_with_optimiser_steps(setup, normalize):
    model, batches = setup
    ref_model, ours = copy.deepcopy(model), copy.deepcopy(model)
    ref = official_scores(ref_model, batches, lr=0.5, normalize=normalize)
    opt = torch.optim.SGD(_params(ours), lr=0.5, momentum=0.9)
    got = mask_importance(ours.method, lambda b: F.cross_entropy(ours(b[0]), b[1]), batches, optimizer=opt,
                          normalize=normalize)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert ref[0].abs().max() > 0 and ref[1].abs().max() > 0
    for a, b in zip(_params(ours), _params(ref_model)):  # the same parameters after the steps
        assert torch.equal(a, b)


def test_token_score_is_the_loss_derivative_in_the_mask(setup):
    """Without steps the score is dL/dm_t averaged over batches: central differences in float64."""
    model = copy.deepcopy(setup[0]).double()
    batches = [(x.double(), y) for x, y in setup[1]]
    loss = lambda b: F.cross_entropy(model(b[0]), b[1])  # noqa: E731
    tok, pie = mask_importance(model.method, loss, batches)
    eps, m = 1e-6, model.method
    with torch.no_grad():
        for t, s in ((0, 3), (4, 15)):
            fd = []
            for mask, idx in ((m.token_mask, (t,)), (m.piece_mask, (t, s))):
                mask[idx] += eps
                up = sum(loss(b) for b in batches)
                mask[idx] -= 2 * eps
                down = sum(loss(b) for b in batches)
                mask[idx] += eps
                fd.append(((up - down) / (2 * eps * len(batches))).item())
            assert abs(tok[t].item() - fd[0]) < 1e-6 and abs(pie[t, s].item() - fd[1]) < 1e-6


def official_sequence(n, percents, min_keep):
    numbers = []
    for p in percents:
        k = int(n * p / 100)
        if min_keep > 0 and k > n - min_keep:
            numbers.append(n - min_keep)
            break
        numbers.append(k)
    numbers = sorted(numbers)
    return numbers, [numbers[0]] + [numbers[i] - numbers[i - 1] for i in range(1, len(numbers))]


def test_mask_counts_match_determine_mask_sequence():
    assert mask_counts(5) == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert mask_counts(16, min_keep=4) == [1, 3, 4, 6, 8, 9, 11, 12, 12]
    for n, keep in ((5, 1), (16, 4), (50, 1), (10, 0), (7, 3)):
        assert mask_counts(n, min_keep=keep) == official_sequence(n, range(10, 100, 10), keep)[0]


def test_chosen_masks_equal_the_official_greedy_sets():
    """what_tokens_to_mask / what_tokens_pieces_to_mask applied step by step over the difference sequence,
    with tied scores (stable order) included; each cumulative total names one candidate file."""
    g = torch.Generator().manual_seed(5)
    tok = torch.randint(-3, 3, (N_TOK,), generator=g).float()
    pie = torch.randint(-4, 4, (N_TOK, N_PIECES), generator=g).float()
    _, seq = official_sequence(N_TOK, range(10, 100, 10), 1)
    chosen, total, files = set(), 0, {}
    for k in seq:
        order = [i for i, _ in sorted([(i, tok[i]) for i in range(N_TOK)], key=lambda x: x[1])]
        for i in [i for i in order if i not in chosen][:k]:
            chosen.add(i)
        total += k
        files[total] = sorted(chosen)
    assert files == {c: tokens_to_prune(tok, c) for c in set(mask_counts(N_TOK))}
    _, seq = official_sequence(N_PIECES, range(10, 100, 10), 4)
    chosen, total, pfiles = {}, 0, {}
    for k in seq:
        for t in range(N_TOK):
            chosen.setdefault(t, set())
            order = [i for i, _ in sorted([(i, pie[t][i]) for i in range(N_PIECES)], key=lambda x: x[1])]
            for i in [i for i in order if i not in chosen[t]][:k]:
                chosen[t].add(i)
        total += k
        pfiles[total] = {t: sorted(v) for t, v in chosen.items()}
    assert pfiles == {c: pieces_to_prune(pie, c) for c in set(mask_counts(N_PIECES, min_keep=4))}
    cands = candidate_prunings(tok, pie)
    assert len(cands) == len(files) * len(pfiles) == 5 * 8
    assert cands[-1] == (files[4], pfiles[12])


def test_rewind_restores_initial_prompts_and_fixes_the_pruned_masks(setup):
    model = copy.deepcopy(setup[0])
    m = model.method
    init = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    rewind(m, init, tokens=[2], pieces={0: [1, 4]})
    assert torch.equal(m.prompt_embeddings, init["prompt_embeddings"]) and torch.equal(m.kv_prompts, init["kv_prompts"])
    assert m.token_mask.tolist() == [1, 1, 0, 1, 1] and m.piece_mask[0, 1] == 0 and m.piece_mask.sum() == 78
    assert not m.token_mask.requires_grad and m.prompt_embeddings.requires_grad
    with pytest.raises(ValueError, match="lack"):
        rewind(m, {}, [], {})
