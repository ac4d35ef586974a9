"""pyproject's filterwarnings: this project's warnings are errors, other packages' are reported.

Checked against the filters pytest really installs for a test, with warnings attributed to a
module the way Python attributes them (the `module` of the frame that warned).
"""

from __future__ import annotations

import warnings

import pytest


def warn_from(module: str, category: type[Warning] = UserWarning) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:  # keeps the active filters, records the rest
        warnings.warn_explicit("a warning", category, filename=f"/x/{module}.py", lineno=1, module=module)
    return seen


@pytest.mark.parametrize("module", ["daemon.core.supervisor", "trainer.runtime", "tests.harness", "daemon"])
@pytest.mark.parametrize("category", [UserWarning, DeprecationWarning, RuntimeWarning])
def test_a_warning_from_this_projects_code_fails_the_test(module, category):
    with pytest.raises(category):
        warn_from(module, category)


def test_a_third_partys_deprecation_is_reported_never_fatal():
    """The case that failed every SSH test on a fresh machine: a new cryptography release warning
    "DSA is deprecated" while asyncssh is imported."""
    from cryptography.utils import CryptographyDeprecationWarning

    seen = warn_from("asyncssh.crypto.dsa", CryptographyDeprecationWarning)
    assert [w.category for w in seen] == [CryptographyDeprecationWarning]


@pytest.mark.parametrize("module", ["daemonize", "trainers.x", "mytests"])
def test_a_package_whose_name_merely_starts_like_ours_is_third_party(module):
    assert len(warn_from(module, DeprecationWarning)) == 1
