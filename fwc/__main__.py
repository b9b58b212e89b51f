from fwc.cli import console

console()
