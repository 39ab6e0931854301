"""One error path: whatever goes wrong, a command ends in one line and a non-zero exit (the traceback only with
--debug); no float option or device figure takes NaN or infinity; --seed -1 is random; threads are capped at the
cores. Each case here once reached the user as a traceback, a NaN in JSON, or a hang."""

from __future__ import annotations

import json

import pytest

from edgellm.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flag, value", [("--temp", "inf"), ("--temp", "nan"), ("--top-p", "1.5"),
                                          ("--min-p", "-0.1"), ("--repeat-penalty", "inf"), ("--top-k", "-3")])
def test_sampling_options_refuse_non_finite_and_out_of_range_values(capsys, tiny_llama, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "-m", str(tiny_llama), "-p", "a", "-n", "2", flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and flag in err


def test_seed_minus_one_is_random_as_in_llama_cpp(capsys, tiny_llama):
    code, out, err = run(capsys, "run", "-m", str(tiny_llama), "-p", "a", "-n", "3", "--seed", "-1", "--json")
    assert code == 0 and json.loads(out)["n_tokens"] == 3


def test_threads_beyond_the_cores_are_capped_with_a_warning(tiny_llama):
    """(It hung: a thousand workers on two cores wait on each other at every step.)"""
    import subprocess
    import sys

    from edgellm import kernels

    done = subprocess.run([sys.executable, "-m", "edgellm", "run", "-m", str(tiny_llama), "-p", "a", "-n", "2", "-t",
                           "1000", "--json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["n_tokens"] == 2
    assert done.stderr.startswith("edgellm: warning: 1000 threads requested but this machine gives "
                                  f"{kernels.cores()} cores; using {kernels.cores()}")  # fmt: skip


def test_an_unexpected_exception_is_one_line_and_exit_1(capsys, monkeypatch, tiny_llama):
    import edgellm.cli.run as run_module

    def boom(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(run_module, "run_run", boom)
    code, out, err = run(capsys, "run", "-m", str(tiny_llama))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "ZeroDivisionError: division by zero" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "run", "-m", str(tiny_llama)])


@pytest.mark.parametrize("bad", [".inf", ".nan", "-.inf"])
def test_device_figures_refuse_nan_and_infinity(tmp_path, bad):
    from edgellm.errors import ConfigError
    from edgellm.planner.device import devices_dir, load_device

    source = (devices_dir() / "raspberry-pi-5.yaml").read_text()
    assert "bandwidth_gbps: {value: 17.1" in source
    broken = tmp_path / "pi.yaml"
    broken.write_text(source.replace("bandwidth_gbps: {value: 17.1", f"bandwidth_gbps: {{value: {bad}"))
    with pytest.raises(ConfigError, match="memory.bandwidth_gbps' must be a finite number"):
        load_device(broken)


@pytest.mark.parametrize("size", ["nan", "inf", "-1G", "0"])
def test_plan_refuses_a_budget_that_is_not_a_positive_size(capsys, size):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "-m", "llama-3.2-1b", "-d", "raspberry-pi-5", "--quant", "Q4_0", "--mem-budget", size, "--json"])
    assert exit_.value.code == 2 and "--mem-budget" in capsys.readouterr().err
