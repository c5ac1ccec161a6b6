# tickhost_add_plugin(<name> SOURCES <src>... [LINK <targets>...] [OUTPUT_DIRECTORY <dir>] [ALLOW_UNDEFINED])
#
# Makes a correct tickhost plugin: a MODULE library named exactly <name>.so (no "lib" prefix), hidden
# symbol visibility (only tickhost_plugin_entry is exported), linked against tickhost::sdk, and built with
# -fno-gnu-unique under GCC so the host can really unload it (GNU unique symbols pin a library in memory;
# clang does not emit them and rejects the flag). Used by tickhost's own plugins/ and by third parties.
# ALLOW_UNDEFINED drops -Wl,--no-undefined (for a plugin that resolves symbols from the host process on purpose).
function(tickhost_add_plugin name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "ALLOW_UNDEFINED" "OUTPUT_DIRECTORY" "SOURCES;LINK")
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "tickhost_add_plugin(${name}): SOURCES is required")
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE tickhost::sdk ${ARG_LINK})
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${ARG_OUTPUT_DIRECTORY}")
  endif()
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-fno-gnu-unique>)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND NOT ARG_ALLOW_UNDEFINED)
    # Refuse to link with undefined symbols the author forgot: fail at build time, not at load time.
    target_link_options(${name} PRIVATE "LINKER:--no-undefined")
  endif()
endfunction()
