//! `#[kata_test]`: registers a function with `kata-test-harness`.
//!
//! ```text
//! #[kata_test]                                      // a plain or async test
//! #[kata_test(requires(root, crio::unavailable))]   // skipped, with the reason, when one is unmet
//! #[kata_test(exclusive(crio_socket))]              // never beside another test holding crio_socket
//! #[kata_test(flavor = "multi_thread", worker_threads = 2)]
//! #[kata_test(helper)]                              // run only as a child process of another test
//! ```
//!
//! A requirement is a path to a `fn() -> Option<String>` that returns why the
//! test cannot run here, or `None`. An async test runs on the runtime
//! `#[tokio::test]` would give it (current thread unless told otherwise).

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::punctuated::Punctuated;
use syn::{Ident, ItemFn, LitInt, LitStr, Path, Token, parse_macro_input};

#[derive(Default)]
struct Args {
    requires: Vec<Path>,
    exclusive: Vec<Ident>,
    multi_thread: bool,
    worker_threads: Option<LitInt>,
    helper: bool,
}

#[proc_macro_attribute]
pub fn kata_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut args = Args::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("requires") {
            let content;
            syn::parenthesized!(content in meta.input);
            args.requires
                .extend(Punctuated::<Path, Token![,]>::parse_terminated(&content)?);
            Ok(())
        } else if meta.path.is_ident("exclusive") {
            let content;
            syn::parenthesized!(content in meta.input);
            args.exclusive
                .extend(Punctuated::<Ident, Token![,]>::parse_terminated(&content)?);
            Ok(())
        } else if meta.path.is_ident("flavor") {
            let flavor: LitStr = meta.value()?.parse()?;
            match flavor.value().as_str() {
                "multi_thread" => args.multi_thread = true,
                "current_thread" => args.multi_thread = false,
                _ => return Err(meta.error("flavor is \"current_thread\" or \"multi_thread\"")),
            }
            Ok(())
        } else if meta.path.is_ident("worker_threads") {
            args.worker_threads = Some(meta.value()?.parse()?);
            Ok(())
        } else if meta.path.is_ident("helper") {
            args.helper = true;
            Ok(())
        } else {
            Err(meta.error(
                "expected requires(..), exclusive(..), flavor = \"..\", worker_threads = N or helper",
            ))
        }
    });
    parse_macro_input!(attr with parser);
    let function = parse_macro_input!(item as ItemFn);
    expand(&args, &function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(args: &Args, function: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let signature = &function.sig;
    if !signature.inputs.is_empty() || !matches!(signature.output, syn::ReturnType::Default) {
        return Err(syn::Error::new_spanned(
            signature,
            "a #[kata_test] takes no arguments and returns nothing: it asserts, or calls kata_test_harness::skip",
        ));
    }
    let name = &signature.ident;
    let wrapper = format_ident!("__kata_test_{}", name);
    let call = if signature.asyncness.is_some() {
        let workers = match (&args.worker_threads, args.multi_thread) {
            (Some(n), _) => quote!(::core::option::Option::Some(#n)),
            (None, true) => quote!(::core::option::Option::Some(2)),
            (None, false) => quote!(::core::option::Option::None),
        };
        quote!(::kata_test_harness::block_on(#workers, #name()))
    } else {
        quote!(#name())
    };
    let requires = &args.requires;
    let exclusive = args.exclusive.iter().map(Ident::to_string);
    let helper = args.helper;
    Ok(quote! {
        #function

        #[doc(hidden)]
        fn #wrapper() {
            #call
        }

        ::kata_test_harness::inventory::submit! {
            ::kata_test_harness::Test {
                module: ::core::module_path!(),
                name: ::core::stringify!(#name),
                run: #wrapper,
                requires: &[#(#requires),*],
                exclusive: &[#(#exclusive),*],
                helper: #helper,
            }
        }
    })
}
