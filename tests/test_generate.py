import pytest
import torch

from windtunnel import Trainer
from windtunnel.generate import generate, sample_next, speculative_generate
from windtunnel.cli import main as cli_main


def main(argv: list[str]) -> int:
    """The subcommand through the CLI's error boundary, as a user runs it."""
    return cli_main(["generate", *argv])
from windtunnel.models import build_model

V = 29


@pytest.fixture
def mtp_model(tiny_model_config):
    """mtp_model(style, n_future, seed): a 2-layer model with MTP heads, in eval mode."""
    def make(style="parallel", n_future=4, seed=0):
        c = tiny_model_config(vocab_size=V, max_seq_len=48, mtp={"n_future": n_future, "style": style})
        torch.manual_seed(seed)
        return build_model(c).eval()
    return make


def test_sample_next_greedy_and_top_p():
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    assert sample_next(logits) == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, 0.5, g) for _ in range(200)}
    assert draws == {1}  # the top token alone already holds half the mass
    draws = {sample_next(logits, 1.0, 0.9, g) for _ in range(200)}
    assert draws == {1, 2}  # the nucleus; token 0 (3.5%) and token 3 are never drawn
    hot = [sample_next(logits, 100.0, 1.0, g) for _ in range(400)]
    assert set(hot) == {0, 1, 2, 3}


@pytest.mark.parametrize("style", ["parallel", "sequential"])
@pytest.mark.parametrize("seed", [0, 1])
def test_speculative_equals_greedy(mtp_model, style, seed):
    model = mtp_model(style, seed=seed)
    prompt = [3, 1, 4, 1, 5]
    greedy = generate(model, prompt, 30)
    spec = speculative_generate(model, prompt, 30)
    assert spec.tokens == greedy.tokens and len(greedy.tokens) == 30
    assert greedy.forwards == 30 and spec.forwards <= 30


class Oracle:
    """Drafts from a known greedy continuation (right=True) or always wrong (right=False)."""

    def __init__(self, model, prompt, continuation, right):
        self.model, self.full, self.right, self.n = model, prompt + continuation, right, len(model.mtp.heads)

    def __call__(self, x, tokens, next_token):
        pos = tokens.size(1) + 1  # the drafts are for positions after next_token
        truth = [self.full[pos + i] if pos + i < len(self.full) else 0 for i in range(self.n)]
        return [torch.tensor([t if self.right else (t + 1) % V]) for t in truth]


@pytest.mark.parametrize("right", [True, False])
def test_acceptance_with_oracle_drafts(mtp_model, right):
    model = mtp_model(n_future=4)
    prompt = [7, 7, 2]
    greedy = generate(model, prompt, 24).tokens
    model.draft = Oracle(model, prompt, greedy, right)
    spec = speculative_generate(model, prompt, 24)
    assert spec.tokens == greedy
    # All drafts right: 4 tokens per verification pass (+ the first pass); all wrong: one per pass, as greedy.
    assert spec.forwards == (1 + 24 // 4 if right else 24)


def test_eos_stops_both(mtp_model):
    model = mtp_model()
    prompt = [1, 2]
    free = generate(model, prompt, 20).tokens
    eos = free[5]
    cut = free[: free.index(eos)]
    assert generate(model, prompt, 20, eos_id=eos).tokens == cut
    assert speculative_generate(model, prompt, 20, eos_id=eos).tokens == cut


def test_stops_at_max_seq_len(mtp_model):
    model = mtp_model()
    prompt = [i % V for i in range(40)]
    assert len(generate(model, prompt, 20).tokens) == 8
    assert len(speculative_generate(model, prompt, 20).tokens) == 8


@pytest.fixture
def train_run(tiny_recipe, token_batches):
    """train_run(out_dir, n_future): a 2-step run on the byte vocabulary, so the CLI can decode prompts."""
    def run(out_dir, n_future):
        recipe = tiny_recipe(model={"vocab_size": 258, "max_seq_len": 0, "n_layers": 1, "mtp": {"n_future": n_future}},
                             train={"eval_every": 100})
        Trainer(recipe, train_data=token_batches(256, n=2), out_dir=out_dir).fit()
        return out_dir
    return run


def test_cli_generates_from_run_dir(tmp_path, capsys, train_run):
    run = train_run(tmp_path / "mtp", n_future=3)
    assert main([str(run), "--prompt", "ab", "--max-new-tokens", "6", "--speculative"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1].startswith("ab") and "tokens/pass" in out.err
    assert main([str(run), "--prompt", "ab", "--max-new-tokens", "4", "--temperature", "0.8", "--top-p", "0.9"]) == 0
    assert main([str(run), "--prompt", "ab", "--speculative", "--temperature", "1"]) == 2
    assert "--speculative" in capsys.readouterr().err


def test_cli_speculative_needs_mtp_heads(tmp_path, capsys, train_run):
    run = train_run(tmp_path / "plain", n_future=1)
    assert main([str(run), "--prompt", "x", "--speculative"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.mtp.n_future" in err
