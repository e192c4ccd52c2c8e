"""Editor support: ``mlspec lsp``, a language server for .merge and .extrap specs.

``analysis`` answers an editor's questions about one spec (diagnostics from the checker itself,
hover, completion, definitions, symbols) in plain values; ``server`` speaks the Language Server
Protocol over stdio with pygls (the optional ``lsp`` extra).
"""
