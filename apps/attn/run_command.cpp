#include <exception>
#include <new>
#include <ostream>

#include "attn/error.hpp"
#include "commands.hpp"

namespace attn::cli {

int run_command(CommandFn fn, const Argv& args, std::ostream& out, std::ostream& err) {
  try {
    return fn(args, out);
  } catch (const Error& e) {
    out.flush();
    err << e.what() << '\n';
    return 2;
  } catch (const std::bad_alloc&) {
    out.flush();
    err << "attn: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    out.flush();
    err << "attn: " << e.what() << '\n';
    return 1;
  }
}

}  // namespace attn::cli
