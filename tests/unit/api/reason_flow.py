"""Which ErrorReasons each RPC handler can raise, read from the server's source, so no list is
kept by hand: an AST walk from the servicer method through the functions it may call.

A reason counts where a DomainError is made with it, `X(..., reason=Reason.R)` or `X(...)` whose
class (or a base) says `reason = Reason.R`, and where `Reason.R` is handed as `reason=` to a
function that makes its error with `reason=reason`. Calls are followed through server/
cpa_scheduler by what the source says of the receiver: `self.f()` to the class's method (and its
subclasses' overrides), `self._x.f()` and `x.f()` through the annotation or constructor of `_x` /
`x` (an interface's implementations included), `module.f()` and `f()` through the imports. A
receiver nothing says the type of (a lambda's parameter) falls back to every method of that name
outside `_UNTYPED_SKIP`. Functions handed on as values (callbacks, tasks) are not followed: a
handler's errors are those raised while it runs.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "server" / "cpa_scheduler"
_ROOT_ERROR = "DomainError"
# Methods of builtin values: `x.get(...)` on a dict is not one of ours when x's type is unknown.
_BUILTIN_METHODS = frozenset(
    name
    for kind in (dict, list, set, str, bytes, frozenset, tuple)
    for name in dir(kind)
    if not name.startswith("_")
) | {"cancel", "done", "result", "set", "wait", "close", "run", "start", "stop", "put_nowait"}
Node = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class _Function:
    qualname: str
    module: str
    cls: str
    node: Node
    reasons: set[str] = field(default_factory=set)
    reason_args: set[tuple[str, str]] = field(default_factory=set)  # (callee name, reason)
    passes_reason: bool = False
    callees: list[_Function] = field(default_factory=list)


@dataclass
class _Class:
    name: str
    module: str
    bases: list[str]
    methods: dict[str, _Function] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)  # attribute -> class name
    reason: str = ""


@dataclass
class _Module:
    name: str
    tree: ast.Module
    functions: dict[str, _Function] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local -> (module, name)
    globals: dict[str, str] = field(default_factory=dict)  # module-level name -> class name


def _module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_name(annotation: ast.expr | None) -> str:
    """The class an annotation names: `T`, `T | None`, `Optional[T]`, `mod.T`; else ""."""
    if isinstance(annotation, ast.Name):
        return annotation.id
    if isinstance(annotation, ast.Attribute):
        return annotation.attr
    if isinstance(annotation, ast.BinOp):  # T | None
        return _type_name(annotation.left) or _type_name(annotation.right)
    if isinstance(annotation, ast.Subscript) and _type_name(annotation.value) == "Optional":
        return _type_name(annotation.slice)
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return _type_name(ast.parse(annotation.value, mode="eval").body)
    return ""


def _callable_arguments(annotation: ast.expr | None) -> list[str]:
    """The argument types of `Callable[[A, B], R]`, else []."""
    if (
        isinstance(annotation, ast.Subscript)
        and _type_name(annotation.value) == "Callable"
        and isinstance(annotation.slice, ast.Tuple)
        and isinstance(first := annotation.slice.elts[0], ast.List)
    ):
        return [_type_name(e) for e in first.elts]
    return []


def _reason_literal(node: ast.expr | None) -> str:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Reason"
    ):
        return node.attr
    return ""


class Package:
    """Every module, class and function of the package, and the calls between them."""

    def __init__(self, root: Path = PACKAGE) -> None:
        self.modules: dict[str, _Module] = {}
        self.classes: dict[str, list[_Class]] = {}
        self.by_name: dict[str, list[_Function]] = {}
        self._implementing: dict[str, list[str]] = {}
        for path in sorted(root.rglob("*.py")):
            name = _module_name(path, root)
            self.modules[name] = _Module(name, ast.parse(path.read_text(), str(path)))
        for module in self.modules.values():
            self._index(module)
        for module in self.modules.values():
            for function in self._functions_of(module):
                self._link(module, function)

    # -- indexing -------------------------------------------------------------------------

    def _index(self, module: _Module) -> None:
        package = module.name
        for node in module.tree.body:
            if isinstance(node, ast.ImportFrom):
                base = self._resolve_from(package, node)
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = (base, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = (alias.name, "")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                module.functions[node.name] = self._function(module, node, "")
            elif isinstance(node, ast.ClassDef):
                self._index_class(module, node)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                # `JOB_STATE_MACHINE: StateMachine[JobState] = StateMachine(...)`
                annotated = node.annotation
                if isinstance(annotated, ast.Subscript):
                    annotated = annotated.value
                if kind := _type_name(annotated) or self._value_type(node.value, {}):
                    module.globals[node.target.id] = kind
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and (kind := self._value_type(node.value, {})):
                    module.globals[target.id] = kind

    def _is_package(self, module: _Module) -> bool:
        return any(other.startswith(module.name + ".") for other in self.modules)

    def _resolve_from(self, package: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = package.split(".")
        if not self._is_package(self.modules[package]):
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, node.module] if node.module else parts)

    def _function(self, module: _Module, node: Node, cls: str) -> _Function:
        function = _Function(
            qualname=f"{cls}.{node.name}" if cls else node.name,
            module=module.name,
            cls=cls,
            node=node,
        )
        self.by_name.setdefault(node.name, []).append(function)
        return function

    def _index_class(self, module: _Module, node: ast.ClassDef) -> None:
        info = _Class(node.name, module.name, [_type_name(b) for b in node.bases])
        self.classes.setdefault(node.name, []).append(info)
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                info.methods[item.name] = self._function(module, item, node.name)
                if any(_type_name(d) == "property" for d in item.decorator_list):
                    info.attrs[item.name] = _type_name(item.returns)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                info.attrs[item.target.id] = _type_name(item.annotation)
                if item.target.id == "reason":
                    info.reason = _reason_literal(item.value)
            elif isinstance(item, ast.Assign) and [
                t.id for t in item.targets if isinstance(t, ast.Name)
            ] == ["reason"]:
                info.reason = _reason_literal(item.value)
        for method in info.methods.values():
            params = self._parameters(method.node)
            for node_ in ast.walk(method.node):
                target, value, annotation = None, None, None
                if isinstance(node_, ast.Assign) and len(node_.targets) == 1:
                    target, value = node_.targets[0], node_.value
                elif isinstance(node_, ast.AnnAssign):
                    target, value, annotation = node_.target, node_.value, node_.annotation
                if not (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    continue
                kind = _type_name(annotation) or self._value_type(value, params)
                if kind:
                    info.attrs.setdefault(target.attr, kind)

    @staticmethod
    def _parameters(node: Node) -> dict[str, str]:
        args = node.args
        return {
            a.arg: _type_name(a.annotation)
            for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
            if a.annotation is not None
        }

    @staticmethod
    def _value_type(value: ast.expr | None, names: dict[str, str]) -> str:
        if isinstance(value, ast.Name):
            return names.get(value.id, "")
        if isinstance(value, ast.Call):
            callee = value.func
            if isinstance(callee, ast.Name):
                # `Cls(...)`, or `cls()` in a classmethod
                return callee.id if callee.id[:1].isupper() else names.get(callee.id, "")
            if isinstance(callee, ast.Attribute) and isinstance(callee.value, ast.Name):
                # `Cls.of(...)`, `Cls.open(...)`: a constructor by convention.
                return callee.value.id if callee.value.id[:1].isupper() else ""
        return ""

    def _functions_of(self, module: _Module) -> Iterator[_Function]:
        yield from module.functions.values()
        for infos in self.classes.values():
            for info in infos:
                if info.module == module.name:
                    yield from info.methods.values()

    # -- classes --------------------------------------------------------------------------

    def is_error(self, name: str) -> bool:
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current == _ROOT_ERROR:
                return True
            if current in seen:
                continue
            seen.add(current)
            todo.extend(b for info in self.classes.get(current, []) for b in info.bases)
        return False

    def default_reason(self, name: str) -> str:
        for info in self.classes.get(name, []):
            if info.reason:
                return info.reason
            for base in info.bases:
                if reason := self.default_reason(base):
                    return reason
        return ""

    def _lookup(self, cls: str, method: str) -> list[_Function]:
        """`method` as class `cls` (or a base) defines it, and its overrides in subclasses:
        what a call on a value of type `cls` may run."""
        found: list[_Function] = []
        for info in self.classes.get(cls, []):
            if method in info.methods:
                found.append(info.methods[method])
            else:
                for base in info.bases:
                    if inherited := self._lookup_up(base, method):
                        found.append(inherited)
                        break
        for sub in self._subclasses(cls):
            if method in sub.methods:
                found.append(sub.methods[method])
        for implementation in self._implementations(cls):
            if (inherited := self._lookup_up(implementation, method)) is not None:
                found.append(inherited)
        return found

    def _implementations(self, protocol: str) -> list[str]:
        """Classes that implement the Protocol `protocol` without naming it: those that have
        every method it declares."""
        if protocol not in self._implementing:
            declared = {
                name
                for info in self.classes.get(protocol, [])
                if "Protocol" in info.bases
                for name in info.methods
            }
            self._implementing[protocol] = [
                name
                for name, infos in self.classes.items()
                if declared
                and name != protocol
                and not any("Protocol" in i.bases for i in infos)
                and all(self._lookup_up(name, m) is not None for m in declared)
            ]
        return self._implementing[protocol]

    def _lookup_up(self, cls: str, method: str) -> _Function | None:
        for info in self.classes.get(cls, []):
            if method in info.methods:
                return info.methods[method]
            for base in info.bases:
                if (found := self._lookup_up(base, method)) is not None:
                    return found
        return None

    def _subclasses(self, cls: str) -> Iterator[_Class]:
        for infos in self.classes.values():
            for info in infos:
                if cls in info.bases:
                    yield info
                    yield from self._subclasses(info.name)

    def _attr_type(self, cls: str, attr: str) -> str:
        for info in self.classes.get(cls, []):
            if attr in info.attrs:
                return info.attrs[attr]
            for base in info.bases:
                if kind := self._attr_type(base, attr):
                    return kind
        return ""

    # -- calls ----------------------------------------------------------------------------

    def _link(self, module: _Module, function: _Function) -> None:
        names = {**module.globals, **self._parameters(function.node)}
        if function.cls:
            names.update(self=function.cls, cls=function.cls)
        for item in ast.walk(function.node):
            if (
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                and item is not function.node
            ):
                for name, kind in self._parameters(item).items():
                    names.setdefault(name, kind)
            elif isinstance(item, ast.Assign | ast.AnnAssign):
                target = item.targets[0] if isinstance(item, ast.Assign) else item.target
                if isinstance(target, ast.Name):
                    annotation = item.annotation if isinstance(item, ast.AnnAssign) else None
                    kind = _type_name(annotation) or self._value_type(item.value, names)
                    if kind:
                        names.setdefault(target.id, kind)
            elif isinstance(item, ast.With | ast.AsyncWith):
                for with_item in item.items:
                    if isinstance(with_item.optional_vars, ast.Name):
                        kind = self._value_type(with_item.context_expr, names)
                        if kind:
                            names.setdefault(with_item.optional_vars.id, kind)
        for item in ast.walk(function.node):
            if isinstance(item, ast.Call):
                self._type_lambdas(module, function, item, names)
        for decorator in function.node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(target, ast.Name):
                function.callees.extend(self._by_import(module, target.id))
        for item in ast.walk(function.node):
            if isinstance(item, ast.Call):
                self._call(module, function, item, names)

    def _type_lambdas(
        self, module: _Module, function: _Function, call: ast.Call, names: dict[str, str]
    ) -> None:
        """A lambda handed to a parameter annotated `Callable[[T, ...], R]`: its parameters
        are of those types (`lambda j: j.cancel()` given as a `Callable[[Job], T]`)."""
        given = [(i, a) for i, a in enumerate(call.args) if isinstance(a, ast.Lambda)] + [
            (k.arg, k.value) for k in call.keywords if isinstance(k.value, ast.Lambda)
        ]
        if not given:
            return
        if isinstance(call.func, ast.Name):
            targets = self._by_import(module, call.func.id)
        elif isinstance(call.func, ast.Attribute):
            targets = self._method_call(module, function, call.func, names)
        else:
            return
        for target in targets:
            args = target.node.args
            positional = [*args.posonlyargs, *args.args]
            if target.cls and positional and positional[0].arg in ("self", "cls"):
                positional = positional[1:]
            by_name = {a.arg: a for a in (*positional, *args.kwonlyargs)}
            for key, value in given:
                assert isinstance(value, ast.Lambda)
                parameter = (
                    positional[key]
                    if isinstance(key, int) and key < len(positional)
                    else by_name.get(key)
                    if isinstance(key, str)
                    else None
                )
                kinds = _callable_arguments(parameter.annotation if parameter else None)
                for lambda_arg, kind in zip(value.args.args, kinds, strict=False):
                    if kind:
                        names.setdefault(lambda_arg.arg, kind)

    def _call(
        self, module: _Module, function: _Function, call: ast.Call, names: dict[str, str]
    ) -> None:
        callee = call.func
        given = next((k.value for k in call.keywords if k.arg == "reason"), None)
        function.passes_reason |= isinstance(given, ast.Name) and given.id == "reason"
        if isinstance(callee, ast.Name):
            if self.is_error(callee.id):
                reason = _reason_literal(given) if given is not None else ""
                if reason or given is None:
                    function.reasons.add(reason or self.default_reason(callee.id))
            elif (reason := _reason_literal(given)) and given is not None:
                function.reason_args.add((callee.id, reason))
            function.callees.extend(self._by_import(module, callee.id))
            return
        if not isinstance(callee, ast.Attribute) or callee.attr.startswith("__"):
            return
        if (reason := _reason_literal(given)) and given is not None:
            function.reason_args.add((callee.attr, reason))
        function.callees.extend(self._method_call(module, function, callee, names))

    def _by_import(self, module: _Module, name: str) -> list[_Function]:
        """What the bare name `name` calls in `module`: its function, a class's __init__."""
        if name in module.functions:
            return [module.functions[name]]
        if name in module.imports:
            source, imported = module.imports[name]
            target = self.modules.get(source)
            if target is None:  # outside the package (or a class: handled below)
                return self._lookup(imported, "__init__") if imported in self.classes else []
            return self._by_import(target, imported)
        if name in self.classes:
            return self._lookup(name, "__init__")
        return []

    def _imported_global(self, source: str, name: str) -> str:
        """The class of a module-level value `name` of module `source` (followed through its
        own imports, as a package's __init__ re-exports), else ""."""
        module = self.modules.get(source)
        for _ in range(5):
            if module is None:
                return ""
            if name in module.globals:
                return module.globals[name]
            if name not in module.imports:
                return ""
            source, name = module.imports[name]
            module = self.modules.get(source)
        return ""

    def _expr_type(self, module: _Module, node: ast.expr, names: dict[str, str]) -> str:
        """The class of a name or attribute chain, as far as annotations and constructors say."""
        if isinstance(node, ast.Name):
            if node.id in names:
                return names[node.id]
            source = module.imports.get(node.id)
            return self._imported_global(*source) if source is not None else ""
        if isinstance(node, ast.Attribute):
            owner = self._expr_type(module, node.value, names)
            return self._attr_type(owner, node.attr) if owner else ""
        return ""

    def _method_call(
        self, module: _Module, function: _Function, callee: ast.Attribute, names: dict[str, str]
    ) -> list[_Function]:
        receiver, method = callee.value, callee.attr
        if isinstance(receiver, ast.Name):
            if receiver.id in ("self", "cls") and function.cls:
                return self._lookup(function.cls, method)
            if receiver.id in names:
                return self._lookup(names[receiver.id], method)
            if receiver.id in self.classes:
                return self._lookup(receiver.id, method)
            source = module.imports.get(receiver.id)
            if source is not None and (kind := self._imported_global(*source)):
                return self._lookup(kind, method)
            if source is not None:
                imported = ".".join(p for p in source if p)
                if imported in self.modules:  # `convert.f(...)`
                    return self._by_import(self.modules[imported], method)
                if source[1] in self.classes:
                    return self._lookup(source[1], method)
                return []
            if receiver.id in module.functions or receiver.id in ("super", "asyncio"):
                return []
        elif isinstance(receiver, ast.Attribute) and (
            kind := self._expr_type(module, receiver, names)
        ):
            # `self._x.f()`, `self._x.store.f()`, `job.options.f()`: the attribute's class.
            return self._lookup(kind, method)
        elif isinstance(receiver, ast.Call) and (kind := self._value_type(receiver, names)):
            return self._lookup(kind, method)
        if method in _BUILTIN_METHODS:
            return []
        # Nothing says what the receiver is: every method of that name.
        return [f for f in self.by_name.get(method, []) if f.cls]

    # -- the walk -------------------------------------------------------------------------

    def has_call(self, caller: str, callee: str) -> bool:
        return any(
            c.qualname == callee for f in self._all() if f.qualname == caller for c in f.callees
        )

    def _all(self) -> Iterator[_Function]:
        for functions in self.by_name.values():
            yield from functions

    def reasons_of(
        self, cls: str, method: str, *, pruned: Collection[tuple[str, str]] = ()
    ) -> dict[str, list[str]]:
        """Each reason `cls.method` can raise, with a call path to where it is written; the
        calls `pruned` ((caller, callee) qualnames) are not followed."""
        (start,) = self._lookup(cls, method)[:1]
        found: dict[str, list[str]] = {}
        paths = {id(start): [start.qualname]}
        queue = [start]
        while queue:
            function = queue.pop(0)
            path = paths[id(function)]
            for reason in function.reasons:
                found.setdefault(reason, path)
            for name, reason in function.reason_args:
                if any(f.passes_reason for f in self.by_name.get(name, [])):
                    found.setdefault(reason, [*path, name])
            for callee in function.callees:
                if (function.qualname, callee.qualname) in pruned:
                    continue
                if id(callee) not in paths:
                    paths[id(callee)] = [*path, callee.qualname]
                    queue.append(callee)
        return found
