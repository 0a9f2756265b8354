#include <cstdio>
int main() { std::puts("attn: command line pending"); return 0; }
