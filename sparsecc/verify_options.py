"""Verification options, checked in one place, and what a failure at a too-tight tolerance means.

A recipe's ``verify:`` block, ``--atol/--rtol`` on the command line and
``compile_model(verify=...)`` all go through :func:`verify_config`, so each
bad value gets the same message (what, where, fix) and exit status 2; once the
model's float type is known, :func:`refuse_unusable_tolerances` refuses (exit 2,
before any pass runs) tolerances that type cannot honour.

:func:`precision_explanation` recognises a failed check whose tolerance is
below what the output's floating-point type can hold: an exact rewrite that
reorders a sum (BatchNorm folded into a Conv) differs from the original by a
few units in the last place, which is not a bug in the pass.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from sparsecc.errors import OptionError
from sparsecc.precision import epsilon
from sparsecc.verify import DTYPE_TOLERANCES, VerifyConfig, VerifyResult

VERIFY_KEYS = ("atol", "rtol", "seed", "iterations")
# A reordered float sum over n terms differs by up to about sqrt(n) ulps; relative tolerances
# under this many machine epsilons cannot tell such rounding from a wrong rewrite.
PRECISION_ULPS = 100
# ... and an error this many epsilons or less (at most 1 %) is rounding, not a wrong rewrite.
ROUNDING_ULPS = 1000


def verify_config(options: Mapping[str, Any] | None, where: str | None = None,
                  base: VerifyConfig | None = None) -> VerifyConfig:
    """A VerifyConfig from ``{atol, rtol, seed, iterations}`` (strings from the CLI accepted).

    Args:
        options: The values given; missing keys (and None values) keep ``base``'s.
        where: Where they came from (a recipe file, "command line"), for messages.
        base: The values not given. Defaults to VerifyConfig().

    Raises:
        OptionError: an unknown key, a non-numeric, negative or infinite tolerance, a seed
            that is not an integer, or fewer than one iteration.
    """
    base = base or VerifyConfig()
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(VERIFY_KEYS))
    if unknown:
        raise OptionError(f"unknown verification option(s) {unknown}", where=where,
                          fix=f"use {', '.join(VERIFY_KEYS)}, e.g. verify: {{atol: 1.0e-5, rtol: 1.0e-4}}")
    values = {key: getattr(base, key) for key in VERIFY_KEYS}
    for key in ("atol", "rtol"):
        if key in options:
            values[key] = _tolerance(key, options[key], where)
    for key, least in (("seed", 0), ("iterations", 1)):
        if key in options:
            values[key] = _integer(key, options[key], least, where)
    return VerifyConfig(**values)


def refuse_unusable_tolerances(config: VerifyConfig, where: str | None) -> None:
    """Refuse tolerances that no check at ``config``'s float type can honour (``config`` resolved for the
    model, :meth:`VerifyConfig.for_model`), before any work.

    A check passes when ``max |diff| <= atol + rtol x max |output|``. A float type of machine epsilon eps
    rounds max |output| to within eps x max |output|, so rtol < eps demands bit-identical outputs unless
    atol makes up for it. The outputs' scale is not known before they are computed: an atol < eps is below
    one unit in the last place of any output of magnitude 1 or more, and an rtol says the same at any scale,
    so both below eps are refused; both exactly 0 is the one exception, a request for bit-identical outputs
    (a ``none`` recipe, a rewrite that only moves data) said in so many words. Tolerances above this floor that
    are still too tight for a model's outputs are known only once they are computed (:func:`raise_if_too_tight`,
    exit 3).

    Raises:
        OptionError: atol and rtol are both below the float type's epsilon.
    """
    dtype = config.dtype or "float32"
    eps = epsilon(dtype)
    if config.atol >= eps or config.rtol >= eps or (config.atol == 0.0 and config.rtol == 0.0):
        return
    least = f"{eps:.2g}"
    default = DTYPE_TOLERANCES.get(dtype, DTYPE_TOLERANCES["float32"])[1]
    raise OptionError(
        f"atol {config.atol:g} and rtol {config.rtol:g} are both below {dtype}'s resolution (epsilon {eps:.3g}, one "
        f"unit in the last place at 1.0): on outputs of magnitude 1 or more the check could pass only bit-identical "
        f"results, and exact rewrites that reorder floating-point sums (BatchNorm folded into a Conv) differ by a few "
        f"units in the last place (to ask for bit-identical outputs, give 0 and 0)", where=where,
        fix=f"give --rtol {least} or more, the smallest meaningful value (relative to max |output|, it holds at any "
            f"scale; {dtype}'s default, {default:g}, leaves room for the rounding of exact rewrites), or --atol "
            f"{least} or more; in a recipe, verify: {{rtol: {default:.1e}}}")


def _tolerance(key: str, value: Any, where: str | None) -> float:
    fix = (f"give {key} as a number >= 0, e.g. --{key} {'1e-5' if key == 'atol' else '1e-4'} "
           "(0 leaves the check to the other tolerance)")
    if isinstance(value, bool):
        raise OptionError(f"{key} must be a number, not {value!r}", where=where, fix=fix)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{key} must be a number, not {value!r}", where=where, fix=fix) from None
    if math.isnan(number) or math.isinf(number):
        raise OptionError(f"{key} must be a finite number, not {value!r} (it would accept any output)",
                          where=where, fix=fix)
    if number < 0:
        raise OptionError(f"{key} must not be negative ({value!r}): no output could pass", where=where, fix=fix)
    return number


def _integer(key: str, value: Any, least: int, where: str | None) -> int:
    fix = f"give {key} as a whole number >= {least}"
    if isinstance(value, bool):
        raise OptionError(f"{key} must be a whole number, not {value!r}", where=where, fix=fix)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise OptionError(f"{key} must be a whole number, not {value!r}", where=where, fix=fix) from None
    if number != float(value) or number < least:
        raise OptionError(f"{key} must be a whole number >= {least}, not {value!r}", where=where, fix=fix)
    return number


def precision_explanation(outcome: VerifyResult) -> tuple[str, str] | None:
    """(what, fix) when a failed check is rounding at a tolerance below the output type's precision.

    None unless every failing output has a floating-point type whose machine epsilon x
    ``PRECISION_ULPS`` exceeds the allowed relative error, and its error is within
    ``ROUNDING_ULPS`` epsilons (and 1 %) of its largest value.
    """
    failing = [o for o in outcome.outputs if not o.passed]
    if not failing:
        return None
    reasons = []
    for output in failing:
        dtype = getattr(output, "dtype", None)
        if dtype is None or not np.issubdtype(np.dtype(dtype), np.floating) or output.max_abs_reference <= 0:
            return None
        eps = epsilon(dtype)
        allowed = outcome.atol / output.max_abs_reference + outcome.rtol
        if not (allowed < PRECISION_ULPS * eps and output.relative_error <= min(ROUNDING_ULPS * eps, 1e-2)):
            return None
        reasons.append((output, eps, allowed))
    output, eps, allowed = max(reasons, key=lambda r: r[0].relative_error)
    dtype = np.dtype(output.dtype).name
    suggested = f"{PRECISION_ULPS * eps:.0e}"
    return (f"the tolerance is below {dtype}'s precision: output '{output.name}' differs by "
            f"{output.relative_error:.3g} x max |output| ({output.relative_error / eps:.0f} ulp of {dtype}, whose "
            f"epsilon is {eps:.3g}), while atol {outcome.atol:g} + rtol {outcome.rtol:g} allows {allowed:.3g}; "
            f"an exact rewrite that reorders floating-point sums differs by this much, so this is rounding, "
            f"not a wrong rewrite", f"use --rtol {suggested} or more (the default for {dtype} is {DTYPE_TOLERANCES.get(dtype, DTYPE_TOLERANCES['float32'])[1]:g})")


def raise_if_too_tight(outcome: VerifyResult, subject: str, where: str | None) -> None:
    """A VerificationError saying the check's tolerance, not ``subject``, is at fault, when a failure is rounding."""
    from sparsecc.errors import VerificationError

    rounding = precision_explanation(outcome)
    if rounding is not None:
        raise VerificationError(f"{subject} was checked at a tolerance too tight to pass: {rounding[0]}",
                                where=where, fix=rounding[1])
