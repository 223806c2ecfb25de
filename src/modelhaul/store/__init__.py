"""The Hugging Face-layout cache, lowest module first (each imports only those above it):

chunks        per-chunk hashing of blobs, the verification record's values
repo          one repository's folder: paths, refs, links, records, the per-blob lock
listing       what a revision should hold: recorded file lists, owed refs, stored commits
verify        checking stored files; preparing a corrupt blob for a chunk repair
localdir      a pulled revision as plain files (--local-dir)
statedb       modelhaul's own facts: pins, last use, known corruption
pull          ModelPuller: fetch what is missing, verify and repair
health        how a model stands, judged without hashing
inventory     the store as a list of models: ls, rm, pin, gc
availability  a model's state over time, for callers that wait on it
"""
