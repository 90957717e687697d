"""Building blocks of the hostile PoT programs the sandbox tests feed it."""

# The real `sys` and `os`, reached without `import`, through an object every interpreter has.
ESCAPE = (
    "sys = [c for c in ().__class__.__base__.__subclasses__()"
    " if c.__name__ == '_wrap_close'][0].__init__.__globals__['sys']\n"
    "os = sys.modules['os']\n"
)

# Switches the audit hook off (after ESCAPE): the template's Runner is a local of a frame below the program's,
# so what stops the program from here on is the kernel.
DISARM = (
    "frame = sys._getframe()\n"
    "while frame is not None and 'runner' not in frame.f_locals:\n"
    "    frame = frame.f_back\n"
    "frame.f_locals['runner'].armed[0] = False\n"
)
