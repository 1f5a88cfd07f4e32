"""``simplemix.quiet``: the libraries' chatter is silenced inside the block only, errors and the package's own
warnings pass, and everything is as it was afterwards."""

import logging
import os
import sys
import warnings

from simplemix.quiet import quiet


def _emit(capsys):
    """What the libraries print at import (DeepSpeed's own stdout handler, a bitsandbytes child logger with no
    handler, so Python's last-resort handler) and a deprecation raised from inside transformers."""
    ds = logging.getLogger("DeepSpeed")
    ds.setLevel(logging.WARNING)  # as deepspeed's create_logger does, inside the block
    ds.warning("Setting accelerator to CPU.")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
    logging.getLogger("bitsandbytes.backends.cpu.ops").error("a real bitsandbytes error")
    exec(compile("import warnings; warnings.warn('`x` is deprecated', FutureWarning)", "transformers_fake", "exec"),
         {"__name__": "transformers.modeling_utils"})
    warnings.warn("the package's own warning", UserWarning)
    return capsys.readouterr()


def test_library_chatter_is_silenced_inside_the_block_and_back_after(capsys, monkeypatch):
    handler = logging.StreamHandler(sys.stdout)  # DeepSpeed's own; bitsandbytes' records reach the root's
    logging.getLogger("DeepSpeed").addHandler(handler)
    root = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet(bars=False):
                assert os.environ["TQDM_DISABLE"] == "1"  # TRL's reference-log-prob bar reads only this
                inside = _emit(capsys)
            assert "TQDM_DISABLE" not in os.environ
            assert [str(w.message) for w in caught] == ["the package's own warning"]
            caught.clear()
            after = _emit(capsys)
            assert sorted(str(w.message) for w in caught) == ["`x` is deprecated", "the package's own warning"]
    finally:
        logging.getLogger("DeepSpeed").removeHandler(handler)
        logging.getLogger().removeHandler(root)
    assert "Setting accelerator" not in inside.out and "gemm_4bit" not in inside.err
    assert "a real bitsandbytes error" in inside.err  # errors are never silenced
    assert "Setting accelerator" in after.out and "gemm_4bit" in after.err  # the negative control
    assert logging.getLogger("bitsandbytes").level == logging.NOTSET


def test_bars_stay_on_unless_asked(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with quiet():
        assert "TQDM_DISABLE" not in os.environ and hf_logging.is_progress_bar_enabled()
    with quiet(bars=False):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
