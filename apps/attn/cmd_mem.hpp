// `attn mem`: KV-cache memory of a model, and a serving simulation of contiguous vs paged
// reservation. argv holds the argc arguments after `mem`; returns the exit status (0, or 2 on
// a bad option, with the message on stderr).
#pragma once

int cmd_mem(int argc, char** argv);
