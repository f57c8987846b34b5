"""What kind of backward pass a tensor's graph holds."""


def adjoint_nodes(grad_fn) -> set[str]:
    """The adjoint solves' backward nodes in the graph below ``grad_fn`` (none: backpropagated step by step)."""
    seen, stack = set(), [grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(child for child, _ in node.next_functions)
    return {type(node).__name__ for node in seen if "Adjoint" in type(node).__name__}
