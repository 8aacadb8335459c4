"""Bad input through the real CLI: one line per problem, exit code 2, no traceback, nothing overwritten."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEMO = os.path.join(REPO, "configs", "demo.yaml")


def raylm(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "raylm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in res.stderr, res.stderr


@pytest.mark.parametrize("override,needle", [
    ("trainer.lrr=1", f"unknown key 'trainer.lrr': did you mean 'trainer.optimizer.lr'? remove it or check the "
                      f"spelling (see `raylm config show {DEMO}` for the keys)"),
    ("trainer.max_steps=many", "trainer.max_steps"),
    ("trainer.optimizer.lr=-0.1", "trainer.optimizer.lr: Input should be greater than 0"),
    ("data.source=/nonexistent/corpus/*.txt", "no files match '/nonexistent/corpus/*.txt'"),
])
def test_bad_input_exits_2_with_one_clear_line(tmp_path, override, needle):
    assert_user_error(raylm("train", DEMO, override, cwd=str(tmp_path)), needle)


def test_config_show_prints_the_resolved_config_and_says_where_old_keys_moved(tmp_path):
    res = raylm("config", "show", DEMO, "trainer.lr=1e-3", "trainer.max_steps=300", cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert "trainer.optimizer.lr = 0.001  (default 0.003)  Peak learning rate." in lines
    assert "[trainer.schedule]" in [line.split("  ")[0] for line in lines]
    assert res.stderr.count("trainer.lr moved to trainer.optimizer.lr") == 1


def test_several_problems_are_all_listed(tmp_path):
    res = raylm("train", DEMO, "trainer.optimizer.lr=-1", "model.n_head=0", "data.blocksize=3", cwd=str(tmp_path))
    assert_user_error(res, "trainer.optimizer.lr", "model.n_head", "data.blocksize")
    assert len([l for l in res.stderr.splitlines() if l.startswith("error:")]) == 3


def test_empty_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("")
    assert_user_error(raylm("prepare", DEMO, f"data.source={tmp_path}/corpus", cwd=str(tmp_path)), "corpus is empty")


def test_tokenizer_smaller_than_its_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "<pad>": 1}, unk_token="<pad>"))
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<pad>").save_pretrained(tmp_path / "tok")
    res = raylm("train", DEMO, f"data.tokenizer.path={tmp_path}/tok", cwd=str(tmp_path))
    assert_user_error(res, "no larger than its special tokens")


def test_bad_input_never_touches_an_existing_run(tmp_path):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("precious: true\n")
    assert_user_error(raylm("train", DEMO, "trainer.optimizer.lr=-1", cwd=str(tmp_path)), "trainer.optimizer.lr")
    assert (run / "config.yaml").read_text() == "precious: true\n"
    assert sorted(os.listdir(run)) == ["config.yaml"]


def test_missing_config_file(tmp_path):
    assert_user_error(raylm("train", "nope.yaml", cwd=str(tmp_path)), "config file not found: nope.yaml")


def test_old_address_of_the_jobs_api_still_works_with_a_notice(tmp_path):
    env_free = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    res = subprocess.run([sys.executable, "-m", "raylm", "jobs", "list", "--address", "http://127.0.0.1:9"],
                         cwd=str(tmp_path), env=dict(env_free, PYTHONPATH=REPO), capture_output=True, text=True,
                         timeout=300)
    assert_user_error(res, "notice: --address for the Jobs API is now --jobs-address",
                      "error: cannot reach the Ray Jobs API at http://127.0.0.1:9")
