"""Front end: policy text -> model.

Reads the policy files (`sources`, `loader`: confined to the policy repository,
bounded), parses them with the lark grammar into the syntax tree (`parse`,
`syntax`), resolves names into the typed, immutable model (`resolve`), and lays
the text out canonically (`formatting`, for `fwc fmt`). Imports only the model,
`fwc.diagnostics`, `fwc.protocols` and `fwc.text`.
"""
