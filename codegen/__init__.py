"""Renders every kernel variant from the Jinja2 templates in shaders/ to WGSL shipped in realm_web/wgsl/."""
