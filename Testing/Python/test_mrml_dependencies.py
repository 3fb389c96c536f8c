"""Installing missing Python packages on first use, after a confirmation: torch first (through the PyTorch
extension's PyTorchUtils), then pip. The dialogs and installers are recording callables; a pip "install"
writes a real module onto sys.path, so that what is importable afterwards is really checked."""

from __future__ import annotations

import sys

import pytest

from AutoSegSensitivity.mrml import dependencies


class Recorder:
    """Stand-ins for Slicer's dialog and installers that log their calls in one list, in order."""

    def __init__(self, site, answer=True, torch_result="torch-module", torch_brings=()):
        self.calls, self.site, self.answer = [], site, answer
        self.torch_result, self.torch_brings = torch_result, torch_brings
        self.torch_present = False

    def confirm(self, message):
        self.calls.append(("confirm", message))
        return self.answer

    def pip_install(self, requirements):
        self.calls.append(("pip", requirements))
        for req in requirements.split():
            name = req.strip('"').split(">")[0].split("=")[0].replace("-", "_")
            (self.site / f"{name}.py").write_text("")

    def install_torch(self):
        self.calls.append(("torch", None))
        if self.torch_result is not None:
            self.torch_present = True
            for name in self.torch_brings:  # packages that come along with torch (e.g. numpy)
                (self.site / f"{name}.py").write_text("")
        return self.torch_result

    def kinds(self):
        return [kind for kind, _ in self.calls]


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture
def fake_torch(monkeypatch):
    """torch reported missing until the recorder's torch installer has run."""
    state = {}

    def attach(recorder):
        state["r"] = recorder
        return recorder

    monkeypatch.setattr(dependencies, "torch_missing", lambda: not state["r"].torch_present)
    return attach


PACKAGES = {"json": "json", "asens_pkg_a": "asens-pkg-a>=1.0", "asens_pkg_b": "asens-pkg-b"}


def test_nothing_missing_asks_nothing():
    asked = []
    assert dependencies.ensure_dependencies(asked.append, asked.append, need_torch=True)
    assert asked == []


def test_torch_is_installed_before_the_pip_packages(site, fake_torch):
    r = fake_torch(Recorder(site))
    assert dependencies.missing_packages(PACKAGES) == ["asens-pkg-a>=1.0", "asens-pkg-b"]
    assert dependencies.ensure_dependencies(r.confirm, r.pip_install, r.install_torch, need_torch=True,
                                            packages=PACKAGES)
    assert r.kinds() == ["confirm", "torch", "pip"]
    message = r.calls[0][1]
    assert "PyTorch" in message and "asens-pkg-a>=1.0" in message and "asens-pkg-b" in message
    assert r.calls[2][1] == '"asens-pkg-a>=1.0" asens-pkg-b'
    assert dependencies.missing_packages(PACKAGES) == []


def test_failed_torch_install_installs_nothing_else_and_returns_false(site, fake_torch):
    r = fake_torch(Recorder(site, torch_result=None))  # PyTorchUtils' installTorch returns None when declined
    assert not dependencies.ensure_dependencies(r.confirm, r.pip_install, r.install_torch, need_torch=True,
                                                packages=PACKAGES)
    assert r.kinds() == ["confirm", "torch"]
    assert dependencies.missing_packages(PACKAGES) == ["asens-pkg-a>=1.0", "asens-pkg-b"]


def test_declined_confirmation_installs_nothing(site, fake_torch):
    r = fake_torch(Recorder(site, answer=False))
    assert not dependencies.ensure_dependencies(r.confirm, r.pip_install, r.install_torch, need_torch=True,
                                                packages=PACKAGES)
    assert r.kinds() == ["confirm"]


def test_what_torch_brought_along_is_not_installed_again(site, fake_torch):
    r = fake_torch(Recorder(site, torch_brings=["asens_pkg_b"]))
    assert dependencies.ensure_dependencies(r.confirm, r.pip_install, r.install_torch, need_torch=True,
                                            packages=PACKAGES)
    assert r.calls[1:] == [("torch", None), ("pip", '"asens-pkg-a>=1.0"')]


def test_present_torch_is_not_installed_again_and_packages_present_are_not_asked_for(site, fake_torch):
    r = fake_torch(Recorder(site))
    r.torch_present = True
    assert dependencies.ensure_dependencies(r.confirm, r.pip_install, r.install_torch, need_torch=True,
                                            packages={"json": "json", "asens_pkg_a": "asens-pkg-a"})
    assert r.kinds() == ["confirm", "pip"] and r.calls[1] == ("pip", "asens-pkg-a")
    assert "PyTorch" not in r.calls[0][1] and "json" not in r.calls[0][1]


def test_missing_torch_without_an_installer_fails_before_asking(site, fake_torch):
    r = fake_torch(Recorder(site))
    assert not dependencies.ensure_dependencies(r.confirm, r.pip_install, None, need_torch=True, packages=PACKAGES)
    assert r.calls == []


def test_pip_install_that_does_not_deliver_gives_false(site):
    packages = {"json": "json", "no_such_module_xyz": "no-such-module-xyz>=1.0"}
    installed = []
    assert not dependencies.ensure_dependencies(lambda m: True, installed.append, packages=packages)
    assert installed == ['"no-such-module-xyz>=1.0"']


class FakePyTorchUtilsLogic:
    """Follows SlicerPyTorch's PyTorchUtilsLogic: static ``torchInstalled()``, ``installTorch(askConfirmation,
    forceComputationBackend, torchVersionRequirement, torchvisionVersionRequirement)`` returning the torch
    module or None, and a ``torch`` property; records the calls."""

    installed = False
    result = "torch-module"
    calls: list = []

    @staticmethod
    def torchInstalled():
        FakePyTorchUtilsLogic.calls.append("torchInstalled")
        return FakePyTorchUtilsLogic.installed

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        self.calls.append(("installTorch", askConfirmation, forceComputationBackend, torchVersionRequirement,
                           torchvisionVersionRequirement))
        return self.result

    @property
    def torch(self):
        self.calls.append("torch")
        return "installed-torch-module"


@pytest.fixture
def torch_logic(monkeypatch):
    monkeypatch.setattr(FakePyTorchUtilsLogic, "calls", [])
    return FakePyTorchUtilsLogic


def test_torch_installer_asks_pytorchutils_with_the_version_requirement(torch_logic):
    install = dependencies.torch_installer(torch_logic)
    assert torch_logic.calls == []  # nothing happens until torch is really needed
    assert install() == "torch-module"
    assert torch_logic.calls == ["torchInstalled", ("installTorch", True, None, dependencies.TORCH_REQUIREMENT, None)]
    assert dependencies.TORCH_REQUIREMENT == ">=2.1"


def test_torch_installer_returns_the_installed_torch_without_installing(torch_logic, monkeypatch):
    monkeypatch.setattr(torch_logic, "installed", True)
    assert dependencies.torch_installer(torch_logic, ask_confirmation=False)() == "installed-torch-module"
    assert torch_logic.calls == ["torchInstalled", "torch"]


def test_torch_installer_declined_stops_ensure_dependencies(torch_logic, monkeypatch, site):
    monkeypatch.setattr(torch_logic, "result", None)
    monkeypatch.setattr(dependencies, "torch_missing", lambda: True)
    pip = []
    assert not dependencies.ensure_dependencies(lambda m: True, pip.append, dependencies.torch_installer(torch_logic),
                                                need_torch=True, packages=PACKAGES)
    assert pip == [] and torch_logic.calls[-1][0] == "installTorch"


def test_pytorch_utils_logic_names_the_missing_extension_and_uses_it_when_present(site, monkeypatch):
    monkeypatch.delitem(sys.modules, "PyTorchUtils", raising=False)
    with pytest.raises(RuntimeError, match="PyTorch extension"):
        dependencies.pytorch_utils_logic()
    (site / "PyTorchUtils.py").write_text("class PyTorchUtilsLogic:\n    pass\n")
    logic = dependencies.pytorch_utils_logic()
    assert type(logic).__name__ == "PyTorchUtilsLogic" and type(logic).__module__ == "PyTorchUtils"
    monkeypatch.delitem(sys.modules, "PyTorchUtils")


def test_core_packages_are_a_subset_of_the_full_list():
    assert set(dependencies.CORE_PACKAGES.items()) < set(dependencies.PACKAGES.items())
    assert "monai" not in dependencies.CORE_PACKAGES and "monai" in dependencies.PACKAGES


# ---- issue 19, finding 7: an old torch is upgraded, a missing PyTorch extension is said first -----------
# SlicerPyTorch (fepegar/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py, commit e1c85cc): ``torchInstalled``
# (l. 157-170) checks presence only (distribution metadata, then ``import torch``); ``installTorch``
# (l. 194-227) hands ``torchVersionRequirement`` to light-the-torch as ``"torch" + requirement``
# (``_getPipInstallArguments`` l. 235-244), which upgrades a torch below it, and skips its own question
# under --testing (l. 207).
class OldTorch:
    """torch 2.0.1 installed (below ">=2.1"); installTorch upgrades it to 2.5.0."""

    def __init__(self, monkeypatch):
        self.version, self.calls = "2.0.1", []
        monkeypatch.setattr(dependencies, "torch_missing", lambda: False)
        monkeypatch.setattr(dependencies, "torch_version", lambda: self.version, raising=False)

    def make_logic(self):
        owner = self

        class Logic:
            @staticmethod
            def torchInstalled():
                owner.calls.append("torchInstalled")
                return True

            @property
            def torch(self):
                owner.calls.append("torch")
                return "old-torch-module"

            def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                             torchvisionVersionRequirement=None):
                owner.calls.append(("installTorch", torchVersionRequirement))
                owner.version = "2.5.0"
                return "new-torch-module"

        return Logic()


def test_an_installed_torch_below_the_requirement_is_upgraded_after_asking(monkeypatch, site):
    old = OldTorch(monkeypatch)
    asked = []
    assert dependencies.ensure_dependencies(lambda m: asked.append(m) or True, asked.append,
                                            dependencies.torch_installer(old.make_logic), need_torch=True,
                                            packages={"json": "json"})
    assert len(asked) == 1 and "upgrade" in asked[0] and "2.0.1" in asked[0] and ">=2.1" in asked[0], asked
    assert old.calls == [("installTorch", dependencies.TORCH_REQUIREMENT)]  # the old torch is not imported first
    assert old.version == "2.5.0"


def test_the_torch_installer_alone_upgrades_an_old_torch(monkeypatch):
    old = OldTorch(monkeypatch)
    assert dependencies.torch_installer(old.make_logic)() == "new-torch-module"
    assert old.calls == [("installTorch", ">=2.1")]


def test_declining_the_upgrade_installs_nothing(monkeypatch, site):
    old = OldTorch(monkeypatch)
    assert not dependencies.ensure_dependencies(lambda m: False, [].append, dependencies.torch_installer(old.make_logic),
                                                need_torch=True, packages={"json": "json"})
    assert old.calls == [] and old.version == "2.0.1"


def test_an_upgrade_that_leaves_the_old_torch_loaded_says_restart(monkeypatch):
    class Loaded:
        __version__ = "2.0.1"

    old = OldTorch(monkeypatch)
    logic = old.make_logic()
    monkeypatch.setattr(type(logic), "installTorch", lambda self, **kw: Loaded(), raising=True)
    with pytest.raises(RuntimeError, match="restart Slicer"):
        dependencies.torch_installer(lambda: logic)()


def test_a_missing_pytorch_extension_is_reported_before_any_question(site, monkeypatch):
    monkeypatch.setattr(dependencies, "torch_missing", lambda: True)
    monkeypatch.delitem(sys.modules, "PyTorchUtils", raising=False)
    asked = []
    with pytest.raises(RuntimeError, match="PyTorch extension"):
        dependencies.ensure_dependencies(lambda m: asked.append(m) or True, asked.append,
                                         dependencies.torch_installer(), need_torch=True, packages=PACKAGES)
    assert asked == []  # nothing was asked, nothing installed


@pytest.mark.parametrize("version, requirement, ok", [
    ("2.0.1", ">=2.1", False), ("2.1", ">=2.1", True), ("2.1.0+cu118", ">=2.1", True), ("2.13.0", ">=2.1", True),
    ("1.13.1", ">=2.1", False), ("2.1.0rc1", ">=2.1", True), ("2.4.0", ">=2.1,<2.4", False),
    ("2.3.9", ">=2.1, <2.4", True), ("2.2", "==2.2.0", True), ("2.2", "!=2.2", False), ("3", ">2.99", True),
])
def test_version_requirements_compare_release_numbers(version, requirement, ok):
    assert dependencies.version_satisfies(version, requirement) is ok


def test_the_installed_torch_version_is_read_without_importing_torch():
    import subprocess

    code = ("import sys; from AutoSegSensitivity.mrml import dependencies as d; v = d.torch_version(); "
            "import importlib.metadata as m; assert v == m.version('torch'), v; "
            "assert 'torch' not in sys.modules; print(d.torch_problem())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"  # this environment's torch meets the requirement
