"""The visualization methods: pure functions of a model, arrays in and arrays out, nothing
written anywhere (the callbacks decide when and write)."""
