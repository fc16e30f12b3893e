import subprocess
import sys


def test_public_api_resolves_every_name():
    import metapeft

    for name in metapeft.__all__:
        assert getattr(metapeft, name) is not None, name


def test_import_is_lazy():
    """``import metapeft`` must not pull in torch (the CLI's --version and help stay instant)."""
    code = "import sys, metapeft; metapeft.__version__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
