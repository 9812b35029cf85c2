"""tox inline plugin: one environment directory shared by every env, and open matrix names.

**Shared environment.** torch makes an environment cost ~6 GB and minutes to build, so every
env of tox.ini lives in one directory (``envdir = {toxworkdir}/shared``). tox 4 records which env
name built a directory and rebuilds it from scratch for any other name; the ``shared-virtualenv``
runner below records the current name before that check, and installs what an env needs on top
of what is there: the directory holds the union of every env's dependencies (an env with extras,
such as ``bench`` with the ``peers`` extra, adds them; the next env without them does not force a
rebuild). It is rebuilt only when the interpreter changes or with ``tox -r``.

**Matrix names.** tox 4 accepts an environment name only when each of its factors appears
somewhere in tox.ini. The benchmark matrix's rule factor is open (a third-party rule package
installed into the environment joins by its rule name, with no edit to this repository), so this
plugin declares every ``bench-*-*-*`` name given with ``-e`` (or ``TOXENV``). Its settings come
from the ``bench:`` factor conditionals in ``[testenv]``; ``python -m suite.reports.matrix``
reports an unknown rule, dataset or backend with the valid names.
"""
from __future__ import annotations

import re
from typing import Iterator

from tox.plugin import impl
from tox.tox_env.python.pip.pip_install import Pip
from tox.tox_env.python.virtual_env.runner import VirtualEnvRunner

MATRIX_ENV = re.compile(r"^bench-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+$")
_state = []


class _SharedPip(Pip):
    def _install_new_deps(self, req, old_req, req_of_type):
        # what another env installed stays; tox would otherwise rebuild for "dependencies removed"
        super()._install_new_deps(req, [r for r in old_req if r in req], req_of_type)


class SharedVirtualEnvRunner(VirtualEnvRunner):
    """``runner = shared-virtualenv``: a virtualenv that several tox envs share."""

    @property
    def installer(self) -> Pip:
        if self._installer is None:
            self._installer = _SharedPip(self)
        return self._installer

    @staticmethod
    def id() -> str:
        return "shared-virtualenv"

    def _setup_env(self) -> None:
        with self.cache.compare({"name": self.conf.name, "type": type(self).__name__}, "ToxEnv"):
            pass  # record this env as the directory's current user
        super()._setup_env()


@impl
def tox_register_tox_env(register) -> None:
    register.add_run_env(SharedVirtualEnvRunner)


@impl
def tox_add_core_config(core_conf, state) -> None:
    _state.append(state)


def _requested() -> Iterator[str]:
    # tox iterates the declared names lazily, after it parsed the command line and built the
    # core configuration (tox_add_core_config above), so the selection is known by then.
    for state in _state[-1:]:
        for name in getattr(state.conf.options, "env", None) or ():
            if MATRIX_ENV.match(name):
                yield name


@impl
def tox_extend_envs():
    return _requested()
