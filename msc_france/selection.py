"""Which chips: one :class:`ChipSelection` value (splits, statuses, a filter expression over the
chip index, explicit chip ids, the groups whose status counts) and one :func:`select` on the chip
index, shared by training, eval, ``index``, ``card``, ``preview`` and ``export``.

The filter language is a plain expression over the index's columns (comparisons, arithmetic,
and/or/not, ``in``, ``abs``), checked node by node before pandas evaluates it: pandas' own
``eval`` would also run methods (``col.to_csv(...)`` writes a file) and compute without bound.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from msc_france.errors import BadInputError, first_line
from msc_france.splits import ALL_SPLITS
from msc_france.store.chip_index import ChipIndex


@dataclass(frozen=True)
class ChipSelection:
    """Which chips of a store.

    Attributes:
        splits: the splits kept (``train``, ``val``, ``test``, ``buffer``); None keeps every chip.
        statuses: chip statuses accepted in every group of ``groups`` (None: any status).
        where: keep the chips for which this expression over the index's columns holds, e.g.
            ``"cloud_fraction_sentinel_2_l2a < 0.1 and class_fraction_50 > 0.2"``
            (docs/dataset-format.md lists the columns).
        chips: keep only these chip ids (an unknown id is an error).
        groups: the groups whose status must be in ``statuses``; None: the groups the reader reads.
    """

    splits: tuple[str, ...] | None = ("train",)
    statuses: tuple[str, ...] | None = ("ok",)
    where: str | None = None
    chips: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for s in self.splits or ():
            if s not in ALL_SPLITS:
                raise BadInputError(f"unknown split '{s}' ({', '.join(ALL_SPLITS)})")

    @classmethod
    def of(cls, split: str | Sequence[str] | None = "train", statuses: Sequence[str] | None = ("ok",),
           where: str | None = None, chips: Sequence[str] | None = None,
           groups: Sequence[str] | None = None) -> ChipSelection:
        """A selection from plain arguments (a split name or several, lists for tuples)."""
        splits = None if split is None else ((split,) if isinstance(split, str) else tuple(split))
        return cls(splits, None if statuses is None else tuple(statuses), where,
                   None if chips is None else tuple(chips), None if groups is None else tuple(groups))

    def mask(self, index: pd.DataFrame, path: str, groups: Sequence[str] = ()) -> np.ndarray:
        """The rows of ``index`` (a store's chip index) this selection keeps, as booleans.

        Args:
            index: the chip index (``Store.index()``).
            path: the store, for messages.
            groups: the groups read, when ``groups`` is None.

        Raises:
            BadInputError: a bad filter expression, or a chip id the store does not hold.
        """
        keep = np.ones(len(index), bool)
        if self.splits is not None:
            keep &= index["split"].isin(list(self.splits)).to_numpy()
        if self.statuses is not None:
            ci = ChipIndex(index)
            for g in self.groups if self.groups is not None else groups:
                keep &= ci.status(g).isin(list(self.statuses)).to_numpy()
        if self.where is not None:
            keep &= query(index, self.where, path)
        if self.chips is not None:
            wanted = set(self.chips)
            unknown = sorted(wanted - set(index["chip_id"]))
            if unknown:
                raise BadInputError(f"store {path} has no chip(s) {', '.join(unknown[:3])}"
                                    + (f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""))
            keep &= index["chip_id"].isin(wanted).to_numpy()
        return keep


def select(index: pd.DataFrame, selection: ChipSelection, path: str, groups: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of ``index`` that ``selection`` keeps (see :meth:`ChipSelection.mask`)."""
    return index[selection.mask(index, path, groups)]


#: The longest ``where`` expression accepted (an expression, not a program).
MAX_WHERE = 2000


def query(index: pd.DataFrame, where: str, path: str) -> np.ndarray:
    """The rows of ``index`` for which ``where`` holds, as a boolean array.

    Raises:
        BadInputError: an expression that does not parse, names an unknown column, or is not a
            true/false per chip.
    """
    if not where.strip() or len(where) > MAX_WHERE:
        raise BadInputError(f"a chip filter must be a non-empty expression of at most {MAX_WHERE} characters")
    frame = pd.DataFrame(index.drop(columns="geometry"))  # no geometry: plain columns only
    _check_filter(where, set(frame.columns))
    try:
        got = frame.eval(where, engine="python", local_dict={}, global_dict={})
    except Exception as e:  # pandas raises SyntaxError, UndefinedVariableError, TypeError, ...
        raise BadInputError(f"chip filter {where!r} on store {path}: {first_line(e)[:200]}") from None
    if not isinstance(got, pd.Series) or got.dtype != bool or len(got) != len(index):
        raise BadInputError(f"chip filter {where!r} is not true or false for each chip (use a comparison)")
    return got.to_numpy()


#: What a chip filter may hold: comparisons, arithmetic and logic over columns and constants, and
#: ``abs``; pandas' own ``eval`` would also run methods (``col.to_csv(...)`` writes a file).
_FILTER_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div,
                 ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
                 ast.Invert, ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
                 ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple)


def _check_filter(where: str, columns: set[str]) -> None:
    """Refuse a chip filter that is not a plain expression over ``columns`` (see :data:`_FILTER_NODES`).

    Raises:
        BadInputError: naming what is not allowed.
    """
    try:
        tree = ast.parse(where.strip(), mode="eval")
    except SyntaxError as e:
        raise BadInputError(f"chip filter {where!r} does not parse ({e.msg})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id == "abs" and len(node.args) == 1
                    and not node.keywords):
                raise BadInputError(f"chip filter {where!r}: only abs(...) may be called")
            continue
        if not isinstance(node, _FILTER_NODES):
            raise BadInputError(f"chip filter {where!r}: {type(node).__name__} is not allowed (comparisons, "
                                "arithmetic, and/or/not, abs over index columns)")
        if isinstance(node, ast.Name) and node.id not in columns and node.id != "abs":
            raise BadInputError(f"chip filter {where!r}: the index has no column '{node.id}'")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str | bool):
            raise BadInputError(f"chip filter {where!r}: constant {node.value!r} is not allowed")
        _check_cost(node, where)


#: Bounds that keep a filter's cost that of a comparison over the index, whatever pandas folds:
#: exponents are small literal numbers, integers fit 64 bits, strings are compared, never computed.
MAX_EXPONENT = 16
MAX_INT = 2**63


def _check_cost(node: ast.AST, where: str) -> None:
    """Refuse what would compute without bound before pandas sees it: ``9 ** 9 ** 9`` (an exponent
    that is not a small literal), ``'x' * 10 ** 9`` (arithmetic on strings), huge integer literals.

    Raises:
        BadInputError: naming the operation.
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool) \
            and abs(node.value) >= MAX_INT:
        raise BadInputError(f"chip filter {where!r}: integer {str(node.value)[:20]}... is larger than 64 bits")
    if not isinstance(node, ast.BinOp):
        return
    for side in (node.left, node.right):
        if isinstance(side, ast.Constant) and isinstance(side.value, str):
            raise BadInputError(f"chip filter {where!r}: strings may be compared, not computed with "
                                f"{type(node.op).__name__}")
    if isinstance(node.op, ast.Pow):
        exp = node.right
        if isinstance(exp, ast.UnaryOp) and isinstance(exp.op, ast.USub | ast.UAdd):
            exp = exp.operand
        if not (isinstance(exp, ast.Constant) and isinstance(exp.value, int | float)
                and not isinstance(exp.value, bool) and abs(exp.value) <= MAX_EXPONENT):
            raise BadInputError(f"chip filter {where!r}: an exponent must be a number between -{MAX_EXPONENT} "
                                f"and {MAX_EXPONENT}")
        if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node.left)):
            raise BadInputError(f"chip filter {where!r}: a power of a power is not allowed")



__all__ = ["ChipSelection", "query", "select"]
