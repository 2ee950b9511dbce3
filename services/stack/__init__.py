"""`kbatch up/down/ps`: the whole local deployment as one supervised command.

`engine` and `plan` say what runs (shared with `kbatch demo`), `supervisor` keeps it
running, `state` is the JSON file `ps` and `down` read, `cli` the three commands.
"""
